//! Scatter-gather. In: a physical plan with [`RemoteScanExec`] leaves. Out: the same plan
//! with the largest server-side subtree over each leaf — a partial aggregate, a sort with a
//! fetch (per-server top-K), a filter or projection, or the scan alone, possibly through
//! broadcast joins — replaced by a [`ScatterExec`], which at execution:
//!
//! 1. routes each published segment of the query's metastore view to one live server that
//!    reports it loaded (the least loaded so far among its replicas);
//! 2. sends each server the fragment naming exactly its segments (datafusion-proto bytes in
//!    a Flight `DoGet` ticket, with the cluster token and what is left of the deadline);
//! 3. takes a server's answer only whole (every batch and its trailer), so a server failing
//!    mid-stream contributes nothing; its segments, and any a server reports it does not
//!    hold, are routed again to replicas not tried yet;
//! 4. when no replica is left for a segment, records it as missing: the result is flagged
//!    partial (Pinot's `partialResult`), never silently short.
//!
//! A real-time table's stream partitions are read the same way, each as a
//! [`StreamRange`] — the partition's rows past the checkpoint of the query's metastore view
//! — routed to the server consuming it (the partition's assigned owner first). A consumer
//! that cannot chain its rows from that checkpoint (it holds a newer seal this broker's view
//! lacks, and dropped it) reports the range missing; the broker then reads the metastore
//! again once and asks for the newly sealed segments plus the range past them.
//!
//! A partition may have several consumers (consuming replicas): its range goes to one, the
//! owner first, and to another only when that one fails or reports it missing. So that a
//! count never goes backwards when a replica slightly behind the failed owner answers, the
//! broker remembers per partition the position up to which it has shown rows (each answer's
//! trailer says it) and asks any server reading the partition to reach it first
//! ([`FragmentTicket::waits`]); a server that cannot reports the range missing.
//!
//! A segment is answered by at most one server, so nothing is counted twice. The broker
//! keeps the final aggregate, sort and limit above. An ordered fragment (a top-K) is merged
//! into one sorted partition here.
//!
//! Broadcast joins: a subtree may pass through hash joins that collect a small build side
//! and emit each probe row's output from that row alone ([`shape::broadcast_join`]). The
//! scatter keeps their build sides as its children: it runs them on the broker first, sends
//! their rows to every server inside the fragment (an in-memory source under each join), and
//! each server joins its share of the probe side. A build side over the [`Broadcast`] limits
//! (estimated so, the join is not cut; found so at execution) is joined here instead, over
//! the probe rows gathered from the servers.

use std::any::Any;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::compute::{cast, concat_batches};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::{RecordBatch, RecordBatchOptions};
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::error::FlightError;
use arrow_flight::Ticket;
use basalt_cluster::wire::{
    FragmentTicket, FragmentTrailer, StreamRange, StreamWait, AUTHORIZATION, ERROR_KIND,
};
use basalt_ingest::upsert::KeyedTable;
use basalt_query::fragment::{self, shape, RemoteScanExec};
use basalt_query::{ErrorKind, QueryBudget, QueryError, QueryStats};
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode, TreeNodeRecursion};
use datafusion::config::ConfigOptions;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::sorts::sort::{sort_batch, SortExec};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    execute_stream, DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties,
    Partitioning, PlanProperties,
};
use futures::{StreamExt, TryStreamExt};
use parking_lot::Mutex;
use prost::Message;
use tokio::sync::OnceCell;
use tracing::{debug, warn};

use super::table::ScanRoute;
use super::Broadcast;

/// Puts a [`ScatterExec`] above every remote scan (see the module header).
#[derive(Debug, Default)]
pub struct ScatterRule;

impl PhysicalOptimizerRule for ScatterRule {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let plan = plan
            .transform_down(|node| {
                let Some(cut) = fragment_cut(&node) else {
                    return Ok(Transformed::no(node));
                };
                // A join whose small side is estimated too large to send runs here; the
                // cut is made below it, on its probe side.
                let limits = route_of(&cut.scan)?.cluster.broadcast;
                if cut.builds.iter().any(|b| !small(b.as_ref(), &limits)) {
                    return Ok(Transformed::no(node));
                }
                let stand_ins = cut
                    .builds
                    .iter()
                    .map(placeholder)
                    .collect::<DfResult<Vec<_>>>()?;
                let fragment = with_builds(&node, &stand_ins, None)?;
                // A subtree DataFusion's protobuf cannot carry (a function of the broker's
                // own) stays on the broker; its children are tried next.
                if fragment::encode(fragment.clone()).is_err() {
                    return Ok(Transformed::no(node));
                }
                // Broadcast joins' build sides run on the broker: their own scans are cut
                // next, below the scatter.
                let next = match cut.builds.is_empty() {
                    true => TreeNodeRecursion::Jump,
                    false => TreeNodeRecursion::Continue,
                };
                let exec = ScatterExec::new(fragment, cut.scan, cut.builds)?;
                Ok(Transformed::new(Arc::new(exec), true, next))
            })
            .data()?;
        let plan = gather_in_one_partition(plan)?;
        let plan = super::finish::wrap_final_aggregates(plan)?;
        consumed_rows(plan, false)
    }

    fn name(&self) -> &str {
        "scatter"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// Marks the scatters whose rows an aggregate or a join on the broker consumes (`consumed`
/// says whether an operator above does): their servers' answers are not rows of the result,
/// so the result's row limit does not apply to them.
fn consumed_rows(plan: Arc<dyn ExecutionPlan>, consumed: bool) -> DfResult<Arc<dyn ExecutionPlan>> {
    let any = plan.as_any();
    let consumes = consumed
        || any.is::<datafusion::physical_plan::aggregates::AggregateExec>()
        || any.is::<super::finish::FinishExec>()
        || any.is::<datafusion::physical_plan::joins::HashJoinExec>()
        || any.is::<datafusion::physical_plan::joins::NestedLoopJoinExec>()
        || any.is::<datafusion::physical_plan::joins::SortMergeJoinExec>()
        || any.is::<datafusion::physical_plan::joins::CrossJoinExec>()
        || any.is::<datafusion::physical_plan::joins::SymmetricHashJoinExec>();
    let children = plan.children();
    let scatter = any.downcast_ref::<ScatterExec>().map(|s| s.rows_are_answer);
    // A scatter's own children are its broadcast joins' build sides: joined.
    let below = consumes || scatter.is_some();
    let new_children = children
        .iter()
        .map(|c| consumed_rows((*c).clone(), below))
        .collect::<DfResult<Vec<_>>>()?;
    let unchanged = children
        .iter()
        .zip(&new_children)
        .all(|(a, b)| Arc::ptr_eq(a, b));
    let plan = if unchanged {
        plan
    } else {
        plan.with_new_children(new_children)?
    };
    match plan.as_any().downcast_ref::<ScatterExec>() {
        Some(s) if consumed && s.rows_are_answer => Ok(Arc::new(s.consumed())),
        _ => Ok(plan),
    }
}

/// A [`ScatterExec`] whose partitions are coalesced right above answers in one partition
/// instead: its answers are in the broker's memory already, and coalescing several
/// partitions would run each on a task of its own (a thread hand-off per query).
fn gather_in_one_partition(plan: Arc<dyn ExecutionPlan>) -> DfResult<Arc<dyn ExecutionPlan>> {
    plan.transform_up(|node| {
        let Some(c) = node.as_any().downcast_ref::<CoalescePartitionsExec>() else {
            return Ok(Transformed::no(node));
        };
        let Some(s) = c.input().as_any().downcast_ref::<ScatterExec>() else {
            return Ok(Transformed::no(node));
        };
        if c.fetch().is_some() {
            return Ok(Transformed::no(node));
        }
        Ok(Transformed::yes(
            Arc::new(s.with_partitions(1)) as Arc<dyn ExecutionPlan>
        ))
    })
    .data()
}

/// Where a subtree that may run on servers is cut.
struct Cut {
    /// Its scan leaf.
    scan: RemoteScanExec,
    /// The build sides of the broadcast joins it passes through (from the top), which the
    /// broker runs.
    builds: Vec<Arc<dyn ExecutionPlan>>,
}

/// The cut when the subtree from `node` down can run on a server: `node` is a partial
/// aggregate, a sort with a fetch, a filter, a projection, a broadcast join or the scan, over
/// a chain of filters, projections and round-robin shuffles — which may pass through one
/// broadcast join, continuing down its probe side.
fn fragment_cut(node: &Arc<dyn ExecutionPlan>) -> Option<Cut> {
    let is_scan = |n: &dyn ExecutionPlan| n.as_any().is::<RemoteScanExec>();
    let is_join = |n: &dyn ExecutionPlan| shape::broadcast_join(n).is_some();
    if !(is_scan(node.as_ref()) || shape::may_top(node.as_ref()) || is_join(node.as_ref())) {
        return None;
    }
    let mut cur = node.clone();
    let mut builds = Vec::new();
    loop {
        if let Some(scan) = cur.as_any().downcast_ref::<RemoteScanExec>() {
            return Some(Cut {
                scan: scan.clone(),
                builds,
            });
        }
        if let Some(j) = shape::broadcast_join(cur.as_ref()) {
            builds.push(j.left().clone());
            cur = j.right().clone();
            continue;
        }
        let children = cur.children();
        let [child] = children.as_slice() else {
            return None;
        };
        let next =
            is_scan(child.as_ref()) || shape::may_chain(child.as_ref()) || is_join(child.as_ref());
        if !next {
            return None;
        }
        cur = (*child).clone();
    }
}

/// Whether a build side's estimate allows sending it to servers (unknown: tried, and
/// joined on the broker if it turns out too large).
fn small(build: &dyn ExecutionPlan, limits: &Broadcast) -> bool {
    build
        .partition_statistics(None)
        .ok()
        .and_then(|s| s.num_rows.get_value().copied())
        .is_none_or(|rows| rows <= limits.max_rows)
}

/// An empty stand-in for a broadcast join's build side, of its schema.
fn placeholder(build: &Arc<dyn ExecutionPlan>) -> DfResult<Arc<dyn ExecutionPlan>> {
    memory_source(build.schema(), Vec::new())
}

/// `batches` as one partition of an in-memory source.
fn memory_source(schema: SchemaRef, batches: Vec<RecordBatch>) -> DfResult<Arc<dyn ExecutionPlan>> {
    Ok(MemorySourceConfig::try_new_exec(&[batches], schema, None)?)
}

/// `fragment` with the build sides of its broadcast joins (from the top) replaced by
/// `builds`, and with `gather_probe` the probe side below the last one by a scatter of it
/// over that scan.
fn with_builds(
    fragment: &Arc<dyn ExecutionPlan>,
    builds: &[Arc<dyn ExecutionPlan>],
    gather_probe: Option<&RemoteScanExec>,
) -> DfResult<Arc<dyn ExecutionPlan>> {
    let Some((first, rest)) = builds.split_first() else {
        return Ok(fragment.clone());
    };
    if let Some(j) = shape::broadcast_join(fragment.as_ref()) {
        let probe = match (rest.is_empty(), gather_probe) {
            (true, Some(scan)) => {
                Arc::new(ScatterExec::new(j.right().clone(), scan.clone(), Vec::new())?.consumed())
            }
            _ => with_builds(j.right(), rest, gather_probe)?,
        };
        return fragment
            .clone()
            .with_new_children(vec![first.clone(), probe]);
    }
    match fragment.children().as_slice() {
        [child] => {
            let child = with_builds(child, builds, gather_probe)?;
            fragment.clone().with_new_children(vec![child])
        }
        _ => Err(DataFusionError::Internal(
            "a broadcast fragment without its joins".into(),
        )),
    }
}

/// What every partition of a [`ScatterExec`] shares: the servers' answers, gathered once.
pub(super) struct Gathered {
    batches: Vec<RecordBatch>,
    /// One server answered, with partial aggregate states holding each group once.
    pub(super) groups_unique: bool,
    _memory: MemoryReservation,
}

pub(super) type Shared = Result<Arc<Gathered>, Arc<(ErrorKind, String)>>;

/// Runs a fragment on the servers holding its table's segments and merges their answers.
#[derive(Clone)]
pub struct ScatterExec {
    /// The fragment, its broadcast joins' build sides empty stand-ins.
    fragment: Arc<dyn ExecutionPlan>,
    scan: RemoteScanExec,
    /// The build sides of the fragment's broadcast joins (from the top), which the broker
    /// runs and sends.
    builds: Vec<Arc<dyn ExecutionPlan>>,
    route: Arc<ScanRoute>,
    props: Arc<PlanProperties>,
    result: Arc<OnceCell<Shared>>,
    /// Whether the servers' rows are rows of the answer (only projected, filtered, sorted
    /// or limited above), so the query's row limit bounds them. Rows an aggregate or a join
    /// on the broker consumes are bounded by memory alone, as in `standalone`, where the
    /// row limit is the result's.
    rows_are_answer: bool,
}

impl fmt::Debug for ScatterExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScatterExec")
            .field("table", &self.route.table)
            .finish()
    }
}

impl ScatterExec {
    /// The answers every partition shares, once gathered.
    pub(super) fn result(&self) -> Arc<OnceCell<Shared>> {
        self.result.clone()
    }

    /// The fragment the servers run.
    pub(super) fn fragment(&self) -> &Arc<dyn ExecutionPlan> {
        &self.fragment
    }

    fn new(
        fragment: Arc<dyn ExecutionPlan>,
        scan: RemoteScanExec,
        builds: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Self> {
        let route = route_of(&scan)?;
        let partitions = fragment.output_partitioning().partition_count().max(1);
        Ok(ScatterExec {
            props: properties(&fragment, partitions),
            fragment,
            scan,
            builds,
            route,
            result: Arc::new(OnceCell::new()),
            rows_are_answer: true,
        })
    }

    /// The same scatter, its rows consumed by an operator on the broker.
    fn consumed(&self) -> Self {
        ScatterExec {
            rows_are_answer: false,
            result: Arc::new(OnceCell::new()),
            ..self.clone()
        }
    }

    /// The same scatter, answering in `partitions` partitions.
    fn with_partitions(&self, partitions: usize) -> Self {
        ScatterExec {
            props: properties(&self.fragment, partitions),
            result: Arc::new(OnceCell::new()),
            ..self.clone()
        }
    }

    /// `fragment` (this scatter's, its build side sent) reading `segments`.
    fn fragment_for(
        &self,
        fragment: &Arc<dyn ExecutionPlan>,
        segments: Vec<String>,
    ) -> DfResult<Vec<u8>> {
        let leaf = Arc::new(self.scan.with_segments(segments)) as Arc<dyn ExecutionPlan>;
        let plan = fragment
            .clone()
            .transform_up(|n| match n.as_any().is::<RemoteScanExec>() {
                true => Ok(Transformed::yes(leaf.clone())),
                false => Ok(Transformed::no(n)),
            })
            .data()?;
        Ok(fragment::encode(plan)?.to_vec())
    }
}

/// Where a remote scan's segments are.
fn route_of(scan: &RemoteScanExec) -> DfResult<Arc<ScanRoute>> {
    scan.context
        .clone()
        .downcast::<ScanRoute>()
        .map_err(|_| DataFusionError::Internal("a remote scan without a route".into()))
}

/// A scatter's properties: the fragment's schema and ordering, in `partitions` partitions.
fn properties(fragment: &Arc<dyn ExecutionPlan>, partitions: usize) -> Arc<PlanProperties> {
    let eq = match fragment.output_ordering() {
        Some(ordering) => {
            EquivalenceProperties::new_with_orderings(fragment.schema(), [ordering.clone()])
        }
        None => EquivalenceProperties::new(fragment.schema()),
    };
    Arc::new(PlanProperties::new(
        eq,
        Partitioning::UnknownPartitioning(partitions),
        EmissionType::Final,
        Boundedness::Bounded,
    ))
}

impl DisplayAs for ScatterExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let fragment = datafusion::physical_plan::displayable(self.fragment.as_ref())
            .one_line()
            .to_string();
        let fragment = fragment.trim_end();
        let join = match self.builds.len() {
            0 => "",
            1 => ", broadcast join (its build side below, sent to every server)",
            _ => ", broadcast joins (their build sides below, sent to every server)",
        };
        write!(
            f,
            "ScatterExec: table={}, segments={}",
            self.route.table,
            self.route.segments.len()
        )?;
        match t {
            DisplayFormatType::Verbose => write!(f, ", fragment={fragment}{join}"),
            _ => write!(f, ", fragment=[{fragment}]{join}"),
        }
    }
}

impl ExecutionPlan for ScatterExec {
    fn name(&self) -> &str {
        "ScatterExec"
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        self.builds.iter().collect()
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if children.len() != self.builds.len() {
            return Err(DataFusionError::Internal(format!(
                "ScatterExec takes {} children",
                self.builds.len()
            )));
        }
        if children.is_empty() {
            return Ok(self);
        }
        Ok(Arc::new(ScatterExec {
            builds: children,
            result: Arc::new(OnceCell::new()),
            ..(*self).clone()
        }))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let this = Arc::new(self.clone());
        let schema = self.schema();
        let partitions = self.props.partitioning.partition_count();
        let ordered = self.fragment.output_ordering().cloned();
        let fetch = self
            .fragment
            .as_any()
            .downcast_ref::<SortExec>()
            .and_then(|s| s.fetch());
        let out_schema = schema.clone();
        let work = async move {
            let shared = this
                .result
                .get_or_init(|| gather(this.clone(), context))
                .await
                .clone();
            let gathered = shared.map_err(|e| {
                DataFusionError::External(Box::new(QueryError::invalid(e.0, e.1.clone())))
            })?;
            let batches: Vec<RecordBatch> = match &ordered {
                // A top-K: every server's rows merged into partition 0, in order.
                Some(ordering) => match partition {
                    0 if !gathered.batches.is_empty() => {
                        let all = concat_batches(&out_schema, &gathered.batches)?;
                        vec![sort_batch(&all, ordering, fetch)?]
                    }
                    _ => Vec::new(),
                },
                None => gathered
                    .batches
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| i % partitions == partition)
                    .map(|(_, b)| b.clone())
                    .collect(),
            };
            Ok::<_, DataFusionError>(futures::stream::iter(batches.into_iter().map(Ok)))
        };
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            schema,
            futures::stream::once(work).try_flatten(),
        )))
    }
}

/// Why one server's call failed.
enum CallError {
    /// The server could not answer (down, not holding the table, overloaded): its
    /// segments go to other replicas.
    Server(String),
    /// The query itself failed there (a bad value, a limit): the query fails.
    Query(QueryError),
}

/// Kinds a server reports that another replica may not hit.
fn retryable(kind: ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::Unavailable
            | ErrorKind::UndefinedTable
            | ErrorKind::Io
            | ErrorKind::DataCorrupted
            | ErrorKind::Internal
            | ErrorKind::Overloaded
    )
}

fn classify(status: &tonic::Status) -> CallError {
    let kind = status
        .metadata()
        .get(ERROR_KIND)
        .and_then(|v| v.to_str().ok())
        .and_then(ErrorKind::from_name);
    match kind {
        Some(k) if !retryable(k) => CallError::Query(QueryError::invalid(k, status.message())),
        _ => CallError::Server(format!("{}: {}", status.code(), status.message())),
    }
}

/// The servers' answers for every segment of the route (see the module header).
async fn gather(this: Arc<ScatterExec>, context: Arc<TaskContext>) -> Shared {
    let shared_err = |e: QueryError| Arc::new((e.kind(), e.to_string()));
    let budget = context
        .session_config()
        .get_extension::<QueryBudget>()
        .map(|b| (*b).clone())
        .unwrap_or(QueryBudget {
            deadline: Instant::now() + Duration::from_secs(10),
            max_rows: 1_000_000,
            memory_limit: 1 << 30,
            use_star_tree: true,
        });
    let route = &this.route;
    let stats = &route.stats;
    let memory = MemoryConsumer::new("ScatterExec").register(context.memory_pool());
    let mut sent = Vec::with_capacity(this.builds.len());
    for build in &this.builds {
        // A broadcast join's build side, run here.
        let rows = collect_reserved(build.clone(), context.clone(), &memory)
            .await
            .map_err(shared_err)?;
        sent.push(memory_source(build.schema(), rows).map_err(|e| shared_err(e.into()))?);
    }
    let joins = &route.cluster.broadcast_joins;
    if !sent
        .iter()
        .all(|s| fits_broadcast(s, &route.cluster.broadcast))
    {
        joins.with_label_values(&["joined_on_broker"]).inc();
        return join_here(&this, &sent, context, memory)
            .await
            .map_err(shared_err);
    }
    if !sent.is_empty() {
        joins.with_label_values(&["sent"]).inc();
    }
    let fragment = with_builds(&this.fragment, &sent, None).map_err(|e| shared_err(e.into()))?;
    let mut todo: Vec<String> = route.segments.iter().map(|s| s.id.clone()).collect();
    todo.extend(route.streams.iter().map(StreamRange::id));
    let mut caught_up = false;
    let mut tried: HashMap<String, HashSet<String>> = HashMap::new();
    let mut batches = Vec::new();
    let mut missing = Vec::new();
    // Spreads equal choices differently per query.
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as usize)
        .unwrap_or(0);
    let mut unroutable = Vec::new();
    let mut waited = false;
    let (mut answers, mut groups_unique) = (0usize, true);
    while !todo.is_empty() {
        let servers = route.cluster.servers();
        let mut plan: BTreeMap<String, (SocketAddr, Vec<String>)> = BTreeMap::new();
        let live = live_placement(&servers);
        for seg in todo.drain(..) {
            let done = tried.get(&seg);
            // A stream range goes to its partition's assigned consumer first.
            let owner = StreamRange::parse(&seg)
                .and_then(|r| live.partition_owner(&route.table, r.partition));
            let candidates: Vec<_> = servers
                .iter()
                .filter(|m| holds(m, &route.table, &seg))
                .filter(|m| done.is_none_or(|d| !d.contains(&m.node_id)))
                .filter_map(|m| Some((m.node_id.clone(), m.flight_addr?, m.leaving)))
                .collect();
            let pick = candidates
                .iter()
                .enumerate()
                .min_by_key(|(i, (node, _, leaving))| {
                    let load = plan.get(node).map_or(0, |p| p.1.len());
                    let other = owner.is_some_and(|o| o != node);
                    (*leaving, other, load, (i + nonce) % candidates.len().max(1))
                })
                .map(|(_, c)| c.clone());
            match pick {
                Some((node, addr, _)) => plan.entry(node).or_insert((addr, Vec::new())).1.push(seg),
                None => unroutable.push(seg),
            }
        }
        // A segment whose placement names a live server not tried yet is being loaded
        // there (just published, or moving): wait for it a little, once per query.
        let (loading, lost): (Vec<String>, Vec<String>) = unroutable
            .drain(..)
            .partition(|s| !waited && belongs_untried(route, &live, s, tried.get(s)));
        // A stream range no consumer could answer exactly: the consumers may be past a seal
        // this broker's view does not have yet. Once per query, the metastore is read again
        // and each range becomes the newly sealed segments plus the range past them.
        let (behind, lost): (Vec<String>, Vec<String>) = lost
            .into_iter()
            .partition(|s| !caught_up && StreamRange::parse(s).is_some_and(|r| !r.whole));
        if !behind.is_empty() {
            caught_up = true;
            match catch_up(route, &behind).await {
                Ok(ids) => todo.extend(ids),
                Err(e) => {
                    warn!(table = %route.table, error = %e, "could not read the metastore again for stream partitions");
                    missing.extend(behind);
                }
            }
        }
        missing.extend(lost);
        if plan.is_empty() && loading.is_empty() && todo.is_empty() {
            break;
        }
        let calls = plan.into_iter().map(|(node, (addr, segs))| {
            let bytes = this.fragment_for(&fragment, segs.clone());
            let cluster = route.cluster.clone();
            let schema = this.schema();
            let budget = budget.clone();
            let waits = cluster.waits(&route.source, &segs);
            let max_rows = match this.rows_are_answer {
                true => budget.max_rows as u64,
                false => u64::MAX,
            };
            async move {
                let outcome = match bytes {
                    Ok(b) => call(&cluster, addr, b, waits, &budget, max_rows, schema).await,
                    Err(e) => Err(CallError::Query(QueryError::from(e))),
                };
                (node, addr, segs, outcome)
            }
        });
        for (node, addr, segs, outcome) in futures::future::join_all(calls).await {
            stats.servers_queried.fetch_add(1, Ordering::Relaxed);
            for s in &segs {
                tried.entry(s.clone()).or_default().insert(node.clone());
            }
            match outcome {
                Ok((got, trailer)) => {
                    stats.servers_responded.fetch_add(1, Ordering::Relaxed);
                    answers += 1;
                    groups_unique &= trailer.groups_unique;
                    stats.add(&trailer_stats(&trailer));
                    route.cluster.shown(&route.source, &trailer.positions);
                    for b in got {
                        memory
                            .try_grow(b.get_array_memory_size())
                            .map_err(|e| shared_err(QueryError::from(e)))?;
                        batches.push(b);
                    }
                    if !trailer.missing.is_empty() {
                        debug!(server = %node, missing = trailer.missing.len(), "server did not hold segments it was asked for; asking other replicas");
                    }
                    todo.extend(trailer.missing);
                }
                Err(CallError::Server(reason)) => {
                    warn!(server = %node, %addr, segments = segs.len(), reason = %reason, "server failed a fragment; asking other replicas");
                    route.cluster.forget_client(addr);
                    todo.extend(segs);
                }
                Err(CallError::Query(e)) => return Err(shared_err(e)),
            }
        }
        if !loading.is_empty() {
            waited = true;
            wait_loaded(route, &loading, budget.deadline).await;
            todo.extend(loading);
        }
        if Instant::now() >= budget.deadline {
            let ms = 0;
            return Err(shared_err(QueryError::Timeout(ms)));
        }
    }
    if !missing.is_empty() {
        warn!(table = %route.table, segments = missing.len(), "no live replica holds these segments: the result is partial");
        stats.missing_segments.lock().extend(missing);
    }
    Ok(Arc::new(Gathered {
        batches,
        groups_unique: groups_unique && answers == 1,
        _memory: memory,
    }))
}

/// Every batch of `plan`, their memory reserved from `memory`.
async fn collect_reserved(
    plan: Arc<dyn ExecutionPlan>,
    context: Arc<TaskContext>,
    memory: &MemoryReservation,
) -> Result<Vec<RecordBatch>, QueryError> {
    let mut batches = Vec::new();
    let mut stream = execute_stream(plan, context)?;
    while let Some(b) = stream.next().await {
        let b = b?;
        memory.try_grow(b.get_array_memory_size())?;
        batches.push(b);
    }
    Ok(batches)
}

/// Whether a build side is small enough to send to every server.
fn fits_broadcast(sent: &Arc<dyn ExecutionPlan>, limits: &Broadcast) -> bool {
    let Some(source) = sent
        .as_any()
        .downcast_ref::<DataSourceExec>()
        .and_then(|d| {
            d.data_source()
                .as_any()
                .downcast_ref::<MemorySourceConfig>()
        })
    else {
        return false;
    };
    let batches = source.partitions().iter().flatten();
    let rows: usize = batches.clone().map(RecordBatch::num_rows).sum();
    let bytes: usize = batches.map(RecordBatch::get_array_memory_size).sum();
    rows <= limits.max_rows && bytes <= limits.max_bytes
}

/// The answer of a broadcast fragment one of whose build sides turned out too large to
/// send: the joins run here, over `builds` and the probe side's rows gathered from the
/// servers.
async fn join_here(
    this: &ScatterExec,
    builds: &[Arc<dyn ExecutionPlan>],
    context: Arc<TaskContext>,
    memory: MemoryReservation,
) -> Result<Arc<Gathered>, QueryError> {
    debug!(table = %this.route.table, "a join's build side is too large to send to servers; joining on the broker");
    let plan = with_builds(&this.fragment, builds, Some(&this.scan))?;
    let batches = collect_reserved(plan, context, &memory).await?;
    Ok(Arc::new(Gathered {
        batches,
        groups_unique: false,
        _memory: memory,
    }))
}

/// Longest a query waits for segments being loaded on a live server.
const LOADING_WAIT: Duration = Duration::from_secs(2);

/// The placement over the live servers that are not leaving.
fn live_placement(servers: &[basalt_cluster::Member]) -> basalt_cluster::Placement {
    basalt_cluster::Placement::new(
        servers
            .iter()
            .filter(|m| !m.leaving)
            .map(|m| m.node_id.clone()),
    )
}

/// Whether `m` announces `seg` (a sealed segment loaded, or a stream range's partition
/// consumed).
fn holds(m: &basalt_cluster::Member, table: &str, seg: &str) -> bool {
    match StreamRange::parse(seg) {
        Some(r) => m
            .consuming
            .get(table)
            .is_some_and(|c| c.contains_key(&r.partition)),
        None => m.has_segment(table, seg),
    }
}

/// Whether `seg` belongs (by placement over the live servers) on a server that has not
/// been tried for it: a stream range on its partition's consumer, a sealed segment where the
/// servers place it (an upsert or dedup table's real-time one with its partition).
fn belongs_untried(
    route: &ScanRoute,
    live: &basalt_cluster::Placement,
    seg: &str,
    tried: Option<&HashSet<String>>,
) -> bool {
    let untried = |n: &str| tried.is_none_or(|t| !t.contains(n));
    match StreamRange::parse(seg) {
        Some(r) => live
            .partition_owner(&route.table, r.partition)
            .is_some_and(untried),
        None => {
            let partition = route
                .segments
                .iter()
                .find(|m| m.id == seg)
                .and_then(|m| KeyedTable::placement_partition(&route.source.spec, m));
            live.home_replicas(&route.table, seg, partition, route.replication)
                .into_iter()
                .any(untried)
        }
    }
}

/// The ids to read instead of stream ranges `behind`, from the metastore as it is now: per
/// partition, the sealed segments chaining from the range's checkpoint to the current one,
/// then the range past the current one.
async fn catch_up(route: &ScanRoute, behind: &[String]) -> Result<Vec<String>, String> {
    let Some((segments, checkpoints)) = route
        .source
        .published_now()
        .await
        .map_err(|e| e.to_string())?
    else {
        return Err("the table was dropped".into());
    };
    let mut ids = Vec::new();
    for r in behind.iter().filter_map(|s| StreamRange::parse(s)) {
        let mut at = r.after;
        let now = checkpoints.get(&r.partition).copied();
        while at != now {
            let step = segments
                .iter()
                .filter_map(|s| s.stream)
                .find(|d| d.partition == r.partition && d.from == at)
                .ok_or_else(|| {
                    format!(
                        "partition {} has no sealed segment from offset {at:?}",
                        r.partition
                    )
                })?;
            ids.extend(
                segments
                    .iter()
                    .filter(|s| s.stream == Some(step))
                    .map(|s| s.id.clone()),
            );
            at = Some(step.to);
        }
        ids.push(
            StreamRange {
                partition: r.partition,
                after: now,
                whole: false,
            }
            .id(),
        );
    }
    Ok(ids)
}

/// Waits (at most [`LOADING_WAIT`], within the deadline) until gossip shows each of
/// `segments` loaded somewhere.
async fn wait_loaded(route: &ScanRoute, segments: &[String], deadline: Instant) {
    let until = deadline.min(Instant::now() + LOADING_WAIT);
    while Instant::now() < until {
        route.cluster.refresh().await;
        let servers = route.cluster.servers();
        let all = segments
            .iter()
            .all(|s| servers.iter().any(|m| holds(m, &route.table, s)));
        if all {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn trailer_stats(t: &FragmentTrailer) -> QueryStats {
    QueryStats {
        num_docs_scanned: t.num_docs_scanned,
        total_docs: t.total_docs,
        num_segments_queried: t.num_segments_queried,
        num_segments_matched: t.num_segments_matched,
        num_segments_pruned: t.num_segments_pruned,
        index_lookups: t.index_lookups,
        blocks_scanned: t.blocks_scanned,
        docs_removed_by_dynamic_filters: t.docs_removed_by_dynamic_filters,
        num_segments_star_tree: t.num_segments_star_tree,
        ..QueryStats::default()
    }
}

/// One server's whole answer to one fragment.
async fn call(
    cluster: &super::Cluster,
    addr: SocketAddr,
    plan: Vec<u8>,
    waits: Vec<StreamWait>,
    budget: &QueryBudget,
    max_rows: u64,
    schema: SchemaRef,
) -> Result<(Vec<RecordBatch>, FragmentTrailer), CallError> {
    let remaining = budget.deadline.saturating_duration_since(Instant::now());
    if remaining.is_zero() {
        return Err(CallError::Query(QueryError::Timeout(0)));
    }
    let ticket = FragmentTicket {
        plan,
        timeout_ms: remaining.as_millis() as u64,
        max_rows,
        memory_limit: budget.memory_limit as u64,
        query_id: String::new(),
        waits,
        star_tree_off: !budget.use_star_tree,
    };
    let mut req = tonic::Request::new(Ticket {
        ticket: ticket.encode_to_vec().into(),
    });
    let token = format!("Bearer {}", cluster.token)
        .parse()
        .map_err(|_| CallError::Server("the cluster token is not valid in a header".into()))?;
    req.metadata_mut().insert(AUTHORIZATION, token);
    req.set_timeout(remaining);
    let work = async {
        let mut client = cluster.client(addr).await.map_err(CallError::Server)?;
        let stream = client
            .do_get(req)
            .await
            .map_err(|s| classify(&s))?
            .into_inner();
        let trailer: Arc<Mutex<Option<bytes::Bytes>>> = Arc::default();
        let seen = trailer.clone();
        let data = stream.map_err(FlightError::from).try_filter_map(move |d| {
            let keep = match d.data_header.is_empty() && !d.app_metadata.is_empty() {
                true => {
                    *seen.lock() = Some(d.app_metadata);
                    None
                }
                false => Some(d),
            };
            futures::future::ready(Ok(keep))
        });
        let mut decoded = FlightRecordBatchStream::new_from_flight_data(data);
        let mut batches = Vec::new();
        while let Some(b) = decoded.next().await {
            let b = b.map_err(|e| match e {
                FlightError::Tonic(s) => classify(&s),
                other => CallError::Server(other.to_string()),
            })?;
            batches.push(conform(b, &schema).map_err(|e| CallError::Server(e.to_string()))?);
        }
        let trailer = trailer
            .lock()
            .take()
            .ok_or_else(|| CallError::Server("the answer ended without its trailer".into()))?;
        let trailer: FragmentTrailer = serde_json::from_slice(&trailer)
            .map_err(|e| CallError::Server(format!("unreadable trailer: {e}")))?;
        Ok((batches, trailer))
    };
    match tokio::time::timeout(remaining, work).await {
        Ok(r) => r,
        Err(_) => Err(CallError::Query(QueryError::Timeout(
            remaining.as_millis() as u64
        ))),
    }
}

/// `b` in exactly `schema`'s types (Flight may send dictionaries as values).
fn conform(b: RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, arrow::error::ArrowError> {
    if b.schema().fields() == schema.fields() {
        return b.with_schema(schema.clone());
    }
    let columns = b
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(c, f)| match c.data_type() == f.data_type() {
            true => Ok(c.clone()),
            false => cast(c, f.data_type()),
        })
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new_with_options(
        schema.clone(),
        columns,
        &RecordBatchOptions::new().with_row_count(Some(b.num_rows())),
    )
}
