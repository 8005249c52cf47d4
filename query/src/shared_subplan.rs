//! Common subplans computed once. In: the optimized logical plan of a query (after every
//! logical rule). Out: its physical plan, in which a join or aggregation that occurs more
//! than once — the same tables, filters, joins and aggregates, up to which columns each
//! occurrence keeps — runs once: each occurrence is a [`SharedExec`] over its own copy of the
//! subplan, and the first of them to run computes the rows for all of them.
//!
//! SQL repeats such subplans where the language gives no other way: a `WITH` table named
//! twice (TPC-H Q15's `revenue` view: 2.3M line items grouped by supplier, for the rows and
//! again for their maximum), or a scalar subquery over the same joins as the outer query
//! (Q11's threshold is the sum over the same `partsupp ⋈ supplier ⋈ nation` the outer query
//! groups). DataFusion inlines both occurrences and computes each.
//!
//! Rules: only subplans that join or aggregate are shared (a lone scan keeps the dynamic
//! filters its own join sends it); none with a volatile function (`random()`: each occurrence
//! draws its own) or under a recursive query (its work table changes between iterations);
//! and only when the subplan's rows are estimated from the segment footers at no more than
//! [`MAX_SHARED_ROWS`], because the rows are held in memory (reserved from the query's pool)
//! until the query ends. Occurrences match when they are equal with their column-only
//! projections removed; the shared subplan keeps the union of the columns they use, and
//! each occurrence projects its own columns from it.

use std::any::Any;
use std::cmp::Ordering;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, DFSchemaRef, ScalarValue, Statistics};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::context::QueryPlanner;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::session_state::SessionState;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{
    Expr, Extension, LogicalPlan, Projection, TableScan, UserDefinedLogicalNode,
    UserDefinedLogicalNodeCore,
};
use datafusion::optimizer::optimize_projections::OptimizeProjections;
use datafusion::optimizer::{OptimizerContext, OptimizerRule};
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    execute_stream, DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties,
    Partitioning, PlanProperties,
};
use datafusion::physical_planner::{DefaultPhysicalPlanner, ExtensionPlanner, PhysicalPlanner};
use futures::StreamExt;
use parking_lot::Mutex;

/// Largest estimated row count of a shared subplan: its rows stay in memory until the
/// query ends, where an unshared occurrence would stream them.
pub(crate) const MAX_SHARED_ROWS: f64 = 4_000_000.0;

/// The query planner that shares common subplans; otherwise DataFusion's default planner.
#[derive(Debug, Default)]
pub(crate) struct SharingQueryPlanner;

#[async_trait]
impl QueryPlanner for SharingQueryPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session_state: &SessionState,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let plan = share_common_subplans(logical_plan)?;
        let planner = DefaultPhysicalPlanner::with_extension_planners(vec![Arc::new(
            SharedPlanner::default(),
        )]);
        planner.create_physical_plan(&plan, session_state).await
    }
}

/// `plan` with every repeated subplan that qualifies (see the module doc) behind a
/// [`SharedSubplan`] node; `plan` itself when nothing repeats.
pub(crate) fn share_common_subplans(plan: &LogicalPlan) -> DfResult<LogicalPlan> {
    // Fast path: sharing needs two joins or aggregations, and no recursion.
    let mut heavy = 0usize;
    let mut recursive = false;
    plan.apply(|n| {
        match n {
            LogicalPlan::Join(_) | LogicalPlan::Aggregate(_) => heavy += 1,
            LogicalPlan::RecursiveQuery(_) => recursive = true,
            _ => {}
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    if heavy < 2 || recursive {
        return Ok(plan.clone());
    }
    let mut groups: HashMap<LogicalPlan, Group> = HashMap::new();
    collect(plan, &mut groups);
    groups.retain(|_, g| g.occurrences >= 2);
    if groups.is_empty() {
        return Ok(plan.clone());
    }
    let mut next_id = 0usize;
    let rewritten = rewrite(plan, &mut groups, &mut next_id)?;
    match rewritten {
        Some(p) => Ok(p),
        None => Ok(plan.clone()),
    }
}

/// Occurrences of one normalized subplan and the columns they use.
#[derive(Debug, Default)]
struct Group {
    occurrences: usize,
    /// The union of the occurrences' output columns, in first-seen order.
    columns: Vec<Column>,
    /// The shared node, built at the first occurrence the rewrite meets (`Some(None)`: not
    /// shared, its rows are not estimated or too many).
    shared: Option<Option<LogicalPlan>>,
}

/// Counts the normalized form of every qualifying subplan of `plan`. Returns whether `plan`
/// may be part of a shared subplan (no volatile expression below it).
fn collect(plan: &LogicalPlan, groups: &mut HashMap<LogicalPlan, Group>) -> bool {
    let mut ok = true;
    for child in plan.inputs() {
        ok &= collect(child, groups);
    }
    ok &= !plan.expressions().iter().any(Expr::is_volatile);
    ok &= !matches!(plan, LogicalPlan::Extension(_));
    // A column-only projection normalizes to its input's form: it is that occurrence
    // again, not another one.
    if ok && joins_or_aggregates(plan) && !is_column_projection(plan) {
        if let Some(norm) = normalize(plan) {
            let g = groups.entry(norm).or_default();
            g.occurrences += 1;
            for c in plan.schema().columns() {
                if !g.columns.contains(&c) {
                    g.columns.push(c);
                }
            }
        }
    }
    ok
}

fn is_column_projection(plan: &LogicalPlan) -> bool {
    matches!(plan, LogicalPlan::Projection(p) if p.expr.iter().all(|e| matches!(e, Expr::Column(_))))
}

fn joins_or_aggregates(plan: &LogicalPlan) -> bool {
    plan.exists(|n| {
        Ok(matches!(
            n,
            LogicalPlan::Join(_) | LogicalPlan::Aggregate(_)
        ))
    })
    .unwrap_or(false)
}

/// `plan` without its column-only projections, every scan reading all of its table's
/// columns: two subplans whose normal forms are equal produce the same rows, each a choice
/// of the normal form's columns. `None` for a node whose output a wider input would change
/// (a union, a window, an extension, ...).
fn normalize(plan: &LogicalPlan) -> Option<LogicalPlan> {
    match plan {
        // A `true` filter (left by a rule that moved the others) filters nothing.
        LogicalPlan::TableScan(s) => TableScan::try_new(
            s.table_name.clone(),
            Arc::clone(&s.source),
            None,
            s.filters
                .iter()
                .filter(|f| !matches!(f, Expr::Literal(ScalarValue::Boolean(Some(true)), _)))
                .cloned()
                .collect(),
            s.fetch,
        )
        .ok()
        .map(LogicalPlan::TableScan),
        LogicalPlan::Projection(p) if is_column_projection(plan) => normalize(&p.input),
        LogicalPlan::Projection(_)
        | LogicalPlan::Filter(_)
        | LogicalPlan::Join(_)
        | LogicalPlan::Aggregate(_)
        | LogicalPlan::SubqueryAlias(_)
        | LogicalPlan::Sort(_)
        | LogicalPlan::Limit(_) => {
            let mut inputs = Vec::new();
            for child in plan.inputs() {
                inputs.push(normalize(child)?);
            }
            let mut inputs = inputs.into_iter();
            plan.clone()
                .map_children(|_| Ok(Transformed::yes(inputs.next().expect("one per child"))))
                .ok()?
                .data
                .recompute_schema()
                .ok()
        }
        _ => None,
    }
}

/// `plan` with each occurrence of a repeated subplan replaced by a projection of its
/// columns over the group's [`SharedSubplan`]; `None` when nothing below `plan` changed.
fn rewrite(
    plan: &LogicalPlan,
    groups: &mut HashMap<LogicalPlan, Group>,
    next_id: &mut usize,
) -> DfResult<Option<LogicalPlan>> {
    if joins_or_aggregates(plan) {
        if let Some(group) = normalize(plan).and_then(|n| groups.get_mut(&n).map(|g| (n, g))) {
            let (norm, g) = group;
            if g.shared.is_none() {
                g.shared = Some(shared_node(norm, &g.columns, next_id)?);
            }
            if let Some(Some(shared)) = &g.shared {
                let exprs = plan
                    .schema()
                    .columns()
                    .into_iter()
                    .map(Expr::Column)
                    .collect();
                let projected =
                    LogicalPlan::Projection(Projection::try_new(exprs, Arc::new(shared.clone()))?);
                // The parents were planned against this exact schema.
                if projected.schema() == plan.schema() {
                    return Ok(Some(projected));
                }
            }
        }
    }
    let mut changed = false;
    let mut inputs = Vec::new();
    for child in plan.inputs() {
        match rewrite(child, groups, next_id)? {
            Some(new) => {
                changed = true;
                inputs.push(new);
            }
            None => inputs.push(child.clone()),
        }
    }
    if !changed {
        return Ok(None);
    }
    let mut inputs = inputs.into_iter();
    let new = plan
        .clone()
        .map_children(|_| Ok(Transformed::yes(inputs.next().expect("one per child"))))?
        .data;
    Ok(Some(new))
}

/// The shared node over `norm` keeping `columns`, with its scans pruned to them again;
/// `None` when its rows are not estimated or too many to hold.
fn shared_node(
    norm: LogicalPlan,
    columns: &[Column],
    next_id: &mut usize,
) -> DfResult<Option<LogicalPlan>> {
    let exprs = columns.iter().cloned().map(Expr::Column).collect();
    let wide = LogicalPlan::Projection(Projection::try_new(exprs, Arc::new(norm))?);
    let input = OptimizeProjections::new()
        .rewrite(wide, &OptimizerContext::new())?
        .data;
    match crate::cardinality::estimate(&input) {
        Some(e) if e.rows <= MAX_SHARED_ROWS => {}
        _ => return Ok(None),
    }
    let id = *next_id;
    *next_id += 1;
    Ok(Some(LogicalPlan::Extension(Extension {
        node: Arc::new(SharedSubplan {
            id,
            input: Arc::new(input),
        }),
    })))
}

/// A subplan computed once for every occurrence with the same `id`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct SharedSubplan {
    id: usize,
    input: Arc<LogicalPlan>,
}

impl PartialOrd for SharedSubplan {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        self.id.partial_cmp(&other.id)
    }
}

impl UserDefinedLogicalNodeCore for SharedSubplan {
    fn name(&self) -> &str {
        "SharedSubplan"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }

    fn schema(&self) -> &DFSchemaRef {
        self.input.schema()
    }

    fn expressions(&self) -> Vec<Expr> {
        vec![]
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "SharedSubplan: id={}", self.id)
    }

    fn with_exprs_and_inputs(
        &self,
        _exprs: Vec<Expr>,
        mut inputs: Vec<LogicalPlan>,
    ) -> DfResult<Self> {
        match inputs.len() {
            1 => Ok(SharedSubplan {
                id: self.id,
                input: Arc::new(inputs.remove(0)),
            }),
            n => Err(DataFusionError::Internal(format!(
                "SharedSubplan takes one input, got {n}"
            ))),
        }
    }
}

/// Plans each [`SharedSubplan`] as a [`SharedExec`]; the occurrences of one id share one
/// [`SharedState`]. One per physical planning, so ids of different queries never meet.
#[derive(Debug, Default)]
struct SharedPlanner {
    states: Mutex<HashMap<usize, Arc<SharedState>>>,
}

#[async_trait]
impl ExtensionPlanner for SharedPlanner {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        _session_state: &SessionState,
    ) -> DfResult<Option<Arc<dyn ExecutionPlan>>> {
        let Some(shared) = node.as_any().downcast_ref::<SharedSubplan>() else {
            return Ok(None);
        };
        let [input] = physical_inputs else {
            return Err(DataFusionError::Internal(
                "SharedSubplan has one input".into(),
            ));
        };
        let state = Arc::clone(
            self.states
                .lock()
                .entry(shared.id)
                .or_insert_with(|| Arc::new(SharedState::new(shared.id))),
        );
        Ok(Some(Arc::new(SharedExec::new(Arc::clone(input), state))))
    }
}

/// What the occurrences of one shared subplan hold in common: its rows, computed once.
#[derive(Debug)]
pub(crate) struct SharedState {
    id: usize,
    rows: tokio::sync::OnceCell<Result<Arc<Rows>, Arc<DataFusionError>>>,
}

/// A shared subplan's rows and the memory they hold, released with them.
#[derive(Debug)]
struct Rows {
    batches: Vec<RecordBatch>,
    _reservation: MemoryReservation,
}

impl SharedState {
    fn new(id: usize) -> Self {
        SharedState {
            id,
            rows: tokio::sync::OnceCell::new(),
        }
    }

    /// Every row of `input`, all partitions, in memory.
    async fn compute(
        &self,
        input: Arc<dyn ExecutionPlan>,
        context: Arc<TaskContext>,
    ) -> DfResult<Arc<Rows>> {
        let reservation =
            MemoryConsumer::new(format!("SharedExec[{}]", self.id)).register(context.memory_pool());
        let mut stream = execute_stream(input, context)?;
        let mut batches = Vec::new();
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            reservation.try_grow(batch.get_array_memory_size())?;
            batches.push(batch);
        }
        Ok(Arc::new(Rows {
            batches,
            _reservation: reservation,
        }))
    }
}

/// One occurrence of a shared subplan: `input` is its own copy of the subplan, run only when
/// this occurrence is the first to need the rows. Partition `i` of `n` replays every `n`th
/// batch from the `i`th, so no partitioning or order is promised.
#[derive(Debug)]
pub struct SharedExec {
    input: Arc<dyn ExecutionPlan>,
    state: Arc<SharedState>,
    props: Arc<PlanProperties>,
}

impl SharedExec {
    pub(crate) fn new(input: Arc<dyn ExecutionPlan>, state: Arc<SharedState>) -> Self {
        let partitions = input.output_partitioning().partition_count().max(1);
        let props = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(input.schema()),
            Partitioning::UnknownPartitioning(partitions),
            EmissionType::Final,
            Boundedness::Bounded,
        ));
        SharedExec {
            input,
            state,
            props,
        }
    }
}

impl DisplayAs for SharedExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "SharedExec: id={}", self.state.id)
    }
}

impl ExecutionPlan for SharedExec {
    fn name(&self) -> &str {
        "SharedExec"
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        match children.len() {
            1 => Ok(Arc::new(SharedExec::new(
                children.remove(0),
                Arc::clone(&self.state),
            ))),
            n => Err(DataFusionError::Internal(format!(
                "SharedExec takes one child, got {n}"
            ))),
        }
    }

    fn partition_statistics(&self, partition: Option<usize>) -> DfResult<Statistics> {
        match partition {
            None => self.input.partition_statistics(None),
            Some(_) => Ok(Statistics::new_unknown(&self.schema())),
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let partitions = self.props.output_partitioning().partition_count();
        if partition >= partitions {
            return Err(DataFusionError::Internal(format!(
                "SharedExec has {partitions} partitions, asked for {partition}"
            )));
        }
        let schema: SchemaRef = self.input.schema();
        let state = Arc::clone(&self.state);
        let input = Arc::clone(&self.input);
        let out = schema.clone();
        let stream = futures::stream::once(async move {
            let rows = state
                .rows
                .get_or_init(|| async { state.compute(input, context).await.map_err(Arc::new) })
                .await
                .clone()
                .map_err(DataFusionError::Shared)?;
            let mine: Vec<DfResult<RecordBatch>> = rows
                .batches
                .iter()
                .skip(partition)
                .step_by(partitions)
                .map(|b| {
                    RecordBatch::try_new(out.clone(), b.columns().to_vec()).map_err(Into::into)
                })
                .collect();
            Ok::<_, DataFusionError>(futures::stream::iter(mine))
        })
        .map(|r| match r {
            Ok(s) => s.boxed(),
            Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
        })
        .flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}
