//! The physical scan over segments. In: a table snapshot, a projection, an optional exact
//! predicate and limit. Out: Arrow record batches of the matching rows, segment by segment.
//!
//! Per segment: prune by footer statistics (time range, dictionaries, zone maps), evaluate the
//! predicate to a doc bitmap with the indexes, then materialise only the projected columns of
//! the matched docs. With no projected columns (e.g. `count(*)`) no column is read at all: the
//! batches carry only row counts taken from bitmap cardinality.

use std::any::Any;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arrow::datatypes::{DataType, Schema, SchemaRef};
use arrow::record_batch::{RecordBatch, RecordBatchOptions};
use basalt_segment::predicate::{evaluate_with_stats, EvalStats};
use basalt_segment::{may_match, Predicate, RoaringBitmap, SegmentReader};
use datafusion::common::stats::Precision;
use datafusion::common::{ColumnStatistics, ScalarValue, Statistics};
use datafusion::config::ConfigOptions;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::filter_pushdown::{
    ChildPushdownResult, FilterPushdownPhase, FilterPushdownPropagation, PushedDown,
};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PhysicalExpr, PlanProperties,
};

use crate::dynamic_filter::{is_dynamic, DynamicFilters, SegmentFilter};
use crate::row_filter::{RowFilter, RowFilterRun};
use crate::table::TableSnapshot;

/// Counters a query reports back (Pinot's numDocsScanned, numSegmentsQueried, ...).
#[derive(Debug, Default)]
pub struct ScanStats {
    pub segments_queried: AtomicU64,
    pub segments_matched: AtomicU64,
    pub segments_pruned: AtomicU64,
    pub docs_scanned: AtomicU64,
    pub total_docs: AtomicU64,
    pub index_lookups: AtomicU64,
    pub blocks_scanned: AtomicU64,
    pub blocks_skipped: AtomicU64,
    /// Docs removed row by row by dynamic filters.
    pub dynamic_removed: AtomicU64,
    /// Scatter-gather (brokers): servers asked, servers that answered, and the segments no
    /// live replica answered for (the result is then partial).
    pub servers_queried: AtomicU64,
    pub servers_responded: AtomicU64,
    pub missing_segments: parking_lot::Mutex<Vec<String>>,
    /// Data files of a warehouse (Iceberg) tier the query read.
    pub warehouse_files: AtomicU64,
    /// Segments whose part of an aggregation was reused from an earlier query
    /// ([`crate::segment_agg::PartialAggregates`]) instead of read.
    pub partials_reused: AtomicU64,
    /// Segments an aggregation answered from a star-tree.
    pub star_tree_segments: AtomicU64,
}

impl ScanStats {
    /// Adds another run's counters (a server's answer to a fragment) to these.
    pub fn add(&self, s: &crate::QueryStats) {
        let r = Ordering::Relaxed;
        self.docs_scanned.fetch_add(s.num_docs_scanned, r);
        self.total_docs.fetch_add(s.total_docs, r);
        self.segments_queried.fetch_add(s.num_segments_queried, r);
        self.segments_matched.fetch_add(s.num_segments_matched, r);
        self.segments_pruned.fetch_add(s.num_segments_pruned, r);
        self.index_lookups.fetch_add(s.index_lookups, r);
        self.blocks_scanned.fetch_add(s.blocks_scanned, r);
        self.dynamic_removed
            .fetch_add(s.docs_removed_by_dynamic_filters, r);
        self.partials_reused.fetch_add(s.num_segments_from_cache, r);
        self.star_tree_segments
            .fetch_add(s.num_segments_star_tree, r);
    }

    /// These counters as a query reports them.
    pub fn snapshot(&self) -> crate::QueryStats {
        let r = Ordering::Relaxed;
        crate::QueryStats {
            num_docs_scanned: self.docs_scanned.load(r),
            total_docs: self.total_docs.load(r),
            num_segments_queried: self.segments_queried.load(r),
            num_segments_matched: self.segments_matched.load(r),
            num_segments_pruned: self.segments_pruned.load(r),
            index_lookups: self.index_lookups.load(r),
            blocks_scanned: self.blocks_scanned.load(r),
            docs_removed_by_dynamic_filters: self.dynamic_removed.load(r),
            num_servers_queried: self.servers_queried.load(r),
            num_servers_responded: self.servers_responded.load(r),
            missing_segments: self.missing_segments.lock().clone(),
            num_warehouse_files: self.warehouse_files.load(r),
            num_segments_from_cache: self.partials_reused.load(r),
            num_segments_star_tree: self.star_tree_segments.load(r),
        }
    }
}

#[derive(Clone)]
pub struct SegmentScanExec {
    snapshot: Arc<TableSnapshot>,
    projection: Vec<usize>,
    predicate: Option<Predicate>,
    /// Estimated share of rows `predicate` keeps (see [`Self::with_selectivity`]).
    keep: f64,
    /// Filters DataFusion pushed in while planning whose value is known only while the plan
    /// runs (hash join builds, TopK, running MIN/MAX): see [`crate::dynamic_filter`].
    dynamic: Arc<DynamicFilters>,
    limit: Option<usize>,
    batch_size: usize,
    /// Segment indexes per output partition.
    partitions: Vec<Vec<usize>>,
    schema: SchemaRef,
    props: Arc<PlanProperties>,
    stats: Arc<ScanStats>,
}

impl fmt::Debug for SegmentScanExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SegmentScanExec")
            .field("table", &self.snapshot.name)
            .field("segments", &self.snapshot.segments.len())
            .field("predicate", &self.predicate)
            .finish()
    }
}

/// Share of rows a predicate is taken to keep when its selectivity was not estimated.
const DEFAULT_SELECTIVITY: f64 = 0.2;

impl SegmentScanExec {
    /// The same scan with `keep` as the estimated share of rows its predicate keeps (from
    /// the segments' footers, [`crate::cardinality::selectivity`]): DataFusion sizes joins
    /// from it, and a filtered side estimated under the broadcast limit is broadcast.
    pub(crate) fn with_selectivity(mut self, keep: f64) -> Self {
        if keep.is_finite() {
            self.keep = keep.clamp(0.0, 1.0);
        }
        self
    }

    pub fn new(
        snapshot: Arc<TableSnapshot>,
        projection: Vec<usize>,
        predicate: Option<Predicate>,
        limit: Option<usize>,
        target_partitions: usize,
        batch_size: usize,
        stats: Arc<ScanStats>,
    ) -> DfResult<Self> {
        let full = snapshot.schema.arrow_schema();
        let schema = Arc::new(Schema::new(
            projection
                .iter()
                .map(|&i| {
                    full.fields().get(i).cloned().ok_or_else(|| {
                        DataFusionError::Plan(format!("projection index {i} out of range"))
                    })
                })
                .collect::<DfResult<Vec<_>>>()?,
        ));
        let n = target_partitions.max(1).min(snapshot.segments.len().max(1));
        let mut partitions = vec![Vec::new(); n];
        // Largest segments first, each to the lightest partition.
        let mut order: Vec<usize> = (0..snapshot.segments.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(snapshot.segments[i].row_count()));
        let mut load = vec![0u64; n];
        for i in order {
            let p = (0..n).min_by_key(|&p| load[p]).unwrap_or(0);
            load[p] += snapshot.segments[i].row_count() as u64 + 1;
            partitions[p].push(i);
        }
        for p in partitions.iter_mut() {
            p.sort_unstable();
        }
        let props = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(n),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Ok(SegmentScanExec {
            snapshot,
            projection,
            predicate,
            keep: DEFAULT_SELECTIVITY,
            dynamic: Arc::default(),
            limit,
            batch_size: batch_size.max(1),
            partitions,
            schema,
            props,
            stats,
        })
    }
}

impl SegmentScanExec {
    pub(crate) fn snapshot(&self) -> &Arc<TableSnapshot> {
        &self.snapshot
    }

    /// Segment columns in the order of this scan's output schema.
    pub(crate) fn projection(&self) -> &[usize] {
        &self.projection
    }

    pub(crate) fn predicate(&self) -> Option<&Predicate> {
        self.predicate.as_ref()
    }

    /// A number that changes whenever one of the dynamic filters gets a new value (read it
    /// before [`Self::filters_now`], so a change between the two is seen next time).
    pub(crate) fn dynamic_generation(&self) -> u64 {
        self.dynamic.generation()
    }

    /// Whether a join's (or a TopK's) dynamic filter reaches this scan.
    pub(crate) fn has_dynamic_filters(&self) -> bool {
        !self.dynamic.is_empty()
    }

    /// The pushed predicate and what the dynamic filters imply now, for a segment about to
    /// be read, and their row-level remainder (over this scan's output columns), if any. The
    /// remainder includes a partitioned join's per-partition CASE: this is what the segment
    /// aggregation runs before hashing rows into its groups.
    pub(crate) fn filters_now(&self) -> DfResult<(Option<Predicate>, Option<RowFilter>)> {
        let (_, dynamic) = self
            .dynamic
            .translate(&self.schema, &self.snapshot.schema, true)?;
        Ok((
            both(self.predicate.as_ref(), dynamic.predicate.clone()),
            dynamic.rows.clone(),
        ))
    }

    /// `, dynamic_filters=[...]` for plan displays, when the scan has any.
    pub(crate) fn fmt_dynamic(&self, f: &mut fmt::Formatter) -> fmt::Result {
        if !self.dynamic.is_empty() {
            let shown: Vec<String> = self.dynamic.exprs().iter().map(|d| d.to_string()).collect();
            write!(f, ", dynamic_filters=[{}]", shown.join(", "))?;
        }
        Ok(())
    }

    pub(crate) fn limit(&self) -> Option<usize> {
        self.limit
    }

    /// Segment indexes per output partition, balanced by row count.
    pub(crate) fn segment_partitions(&self) -> &[Vec<usize>] {
        &self.partitions
    }

    pub(crate) fn batch_size(&self) -> usize {
        self.batch_size
    }

    pub(crate) fn stats(&self) -> &Arc<ScanStats> {
        &self.stats
    }
}

/// `p AND d`, either possibly absent.
fn both(p: Option<&Predicate>, d: Option<Predicate>) -> Option<Predicate> {
    match (p, d) {
        (Some(p), Some(d)) => Some(Predicate::And(vec![p.clone(), d])),
        (p, d) => d.or_else(|| p.cloned()),
    }
}

/// The docs of a segment that satisfy a predicate.
pub(crate) enum Matched {
    /// Every doc (no predicate).
    All(u32),
    Some(RoaringBitmap),
}

impl Matched {
    pub(crate) fn len(&self) -> u64 {
        match self {
            Matched::All(n) => *n as u64,
            Matched::Some(bm) => bm.len(),
        }
    }

    /// How many of the docs `docs` match.
    pub(crate) fn len_in(&self, docs: std::ops::Range<u32>) -> u64 {
        match self {
            Matched::All(n) => docs.end.min(*n).saturating_sub(docs.start) as u64,
            Matched::Some(bm) => bm.range_cardinality(docs),
        }
    }

    /// The doc ids, ascending.
    pub(crate) fn docs(&self) -> Vec<u32> {
        match self {
            Matched::All(n) => (0..*n).collect(),
            Matched::Some(bm) => basalt_segment::doc_list::docs(bm),
        }
    }
}

/// The docs of `seg` that satisfy `predicate` and are `valid` (upsert tables), counted into
/// `stats`; `None` when the segment's statistics rule it out without evaluating the
/// predicate, or it has no valid doc.
pub(crate) fn matching_docs(
    seg: &SegmentReader,
    valid: Option<&Arc<RoaringBitmap>>,
    predicate: Option<&Predicate>,
    stats: &ScanStats,
) -> DfResult<Option<Matched>> {
    stats.segments_queried.fetch_add(1, Ordering::Relaxed);
    stats
        .total_docs
        .fetch_add(seg.row_count() as u64, Ordering::Relaxed);
    if valid.is_some_and(|v| v.is_empty()) {
        stats.segments_pruned.fetch_add(1, Ordering::Relaxed);
        return Ok(None);
    }
    let matched = match predicate {
        None => match valid {
            Some(v) => Matched::Some(RoaringBitmap::clone(v)),
            None => Matched::All(seg.row_count()),
        },
        Some(p) => {
            let keep = may_match(seg, p).map_err(|e| DataFusionError::External(Box::new(e)))?;
            if !keep {
                stats.segments_pruned.fetch_add(1, Ordering::Relaxed);
                return Ok(None);
            }
            let mut es = EvalStats::default();
            let bm = evaluate_with_stats(seg, p, &mut es)
                .map_err(|e| DataFusionError::External(Box::new(e)))?;
            stats
                .index_lookups
                .fetch_add(es.index_lookups, Ordering::Relaxed);
            stats
                .blocks_scanned
                .fetch_add(es.blocks_scanned, Ordering::Relaxed);
            stats
                .blocks_skipped
                .fetch_add(es.blocks_skipped, Ordering::Relaxed);
            match valid {
                Some(v) => Matched::Some(bm & v.as_ref()),
                None => Matched::Some(bm),
            }
        }
    };
    if matched.len() > 0 {
        stats.segments_matched.fetch_add(1, Ordering::Relaxed);
    }
    stats
        .docs_scanned
        .fetch_add(matched.len(), Ordering::Relaxed);
    Ok(Some(matched))
}

impl DisplayAs for SegmentScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "SegmentScanExec: table={}, segments={}, projection={:?}, predicate={:?}, limit={:?}",
            self.snapshot.name,
            self.snapshot.segments.len(),
            self.projection,
            self.predicate,
            self.limit
        )?;
        self.fmt_dynamic(f)
    }
}

struct PartitionState {
    segments: Vec<(Arc<SegmentReader>, Option<Arc<RoaringBitmap>>)>,
    next_segment: usize,
    /// Matched docs of the current segment and how many were emitted.
    docs: Vec<u32>,
    emitted: usize,
    current: Option<Arc<SegmentReader>>,
    remaining: Option<usize>,
    /// The current segment's row-level dynamic filter, while it is worth running.
    rows: Option<RowFilterRun>,
    /// [`DynamicFilters::generation`] of the dynamic filters when `rows` was made.
    dynamic_generation: u64,
}

impl PartitionState {
    /// Starts `rows` as the row filter, with fresh counts for its keep ratios.
    fn set_row_filter(&mut self, rows: Option<RowFilter>) {
        self.rows = rows.map(RowFilter::start);
    }

    /// The dynamic filters changed while segment `seg` was being read: its remaining docs go
    /// through their implied predicate now, and the rest through the row filter.
    fn refilter(
        &mut self,
        seg: &SegmentReader,
        now: &SegmentFilter,
        stats: &ScanStats,
    ) -> DfResult<()> {
        self.set_row_filter(now.rows.clone());
        let Some(p) = &now.predicate else {
            return Ok(());
        };
        let mut es = EvalStats::default();
        let pass = evaluate_with_stats(seg, p, &mut es)
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let before = self.docs.len() - self.emitted;
        let left: Vec<u32> = self.docs[self.emitted..]
            .iter()
            .copied()
            .filter(|d| pass.contains(*d))
            .collect();
        stats
            .dynamic_removed
            .fetch_add((before - left.len()) as u64, Ordering::Relaxed);
        self.docs = left;
        self.emitted = 0;
        Ok(())
    }

    /// The next batch of at most `n` of the current segment's docs, through the row filter
    /// if any; `None` when the filter removed them all.
    fn next_batch(
        &mut self,
        seg: &SegmentReader,
        projection: &[usize],
        schema: &SchemaRef,
        n: usize,
        stats: &ScanStats,
    ) -> DfResult<Option<RecordBatch>> {
        let docs = &self.docs[self.emitted..self.emitted + n];
        self.emitted += n;
        let ext = |e| DataFusionError::External(Box::new(e));
        let Some(rf) = &mut self.rows else {
            if projection.is_empty() {
                return Ok(Some(RecordBatch::try_new_with_options(
                    schema.clone(),
                    vec![],
                    &RecordBatchOptions::new().with_row_count(Some(n)),
                )?));
            }
            let b = seg.read_batch(projection, docs).map_err(ext)?;
            // The reader's field list equals our schema; rebuild to share it.
            return Ok(Some(RecordBatch::try_new(
                schema.clone(),
                b.columns().to_vec(),
            )?));
        };
        let kept = rf.filter(docs, |c, d| seg.read_column(projection[c], d))?;
        stats
            .dynamic_removed
            .fetch_add((n - kept.docs.len()) as u64, Ordering::Relaxed);
        if !rf.is_active() {
            self.rows = None;
        }
        if kept.docs.is_empty() {
            return Ok(None);
        }
        let columns = (0..projection.len())
            .map(|i| match kept.column(i) {
                Some(a) => Ok(Arc::clone(a)),
                None => seg.read_column(projection[i], &kept.docs).map_err(ext),
            })
            .collect::<DfResult<Vec<_>>>()?;
        Ok(Some(RecordBatch::try_new(schema.clone(), columns)?))
    }
}

impl SegmentScanExec {
    /// Estimated distinct non-null values of segment column `c` over `segments`: the sum of
    /// the segments' counts (exact per dictionary, estimated per packed column), at most
    /// `rows`. None when a segment has no count.
    pub(crate) fn distinct_estimate(
        &self,
        segments: &[usize],
        c: usize,
        rows: usize,
    ) -> Option<usize> {
        let mut sum: u64 = 0;
        for &i in segments {
            sum = sum.saturating_add(self.snapshot.segments[i].column_meta(c).stats.distinct?);
        }
        Some((sum as usize).min(rows))
    }

    /// The smallest and largest key of integer segment column `c` over `segments`, from
    /// their footers; `None` when a segment does not know them.
    pub(crate) fn int_bounds(&self, segments: &[usize], c: usize) -> Option<(i64, i64)> {
        segments
            .iter()
            .map(|&i| &self.snapshot.segments[i].column_meta(c).stats)
            .try_fold((i64::MAX, i64::MIN), |(lo, hi), m| {
                Some((lo.min(m.min_key?), hi.max(m.max_key?)))
            })
            .filter(|(lo, hi)| lo <= hi)
    }

    /// What the planner may know of column `c` (a segment column of type `ty`): null count,
    /// integer bounds and distinct values, all inexact (upserts and predicates remove rows).
    /// DataFusion sizes joins with them: rows over the larger key's distinct count.
    fn column_statistics(
        &self,
        segments: &[usize],
        c: usize,
        ty: &DataType,
        rows: usize,
    ) -> ColumnStatistics {
        let mut out = ColumnStatistics::new_unknown();
        if segments.is_empty() {
            return out;
        }
        let metas = || {
            segments
                .iter()
                .map(|&i| &self.snapshot.segments[i].column_meta(c).stats)
        };
        out.null_count = Precision::Inexact(metas().map(|m| m.null_count as usize).sum());
        if let Some(d) = self.distinct_estimate(segments, c, rows) {
            out.distinct_count = Precision::Inexact(d);
        }
        let bounds = self.int_bounds(segments, c);
        let scalar = |k: i64| match ty {
            DataType::Int64 => Some(ScalarValue::Int64(Some(k))),
            DataType::Int32 => i32::try_from(k).ok().map(|v| ScalarValue::Int32(Some(v))),
            DataType::Date32 => i32::try_from(k).ok().map(|v| ScalarValue::Date32(Some(v))),
            _ => None,
        };
        if let Some((lo, hi)) = bounds {
            if let (Some(lo), Some(hi)) = (scalar(lo), scalar(hi)) {
                out.min_value = Precision::Inexact(lo);
                out.max_value = Precision::Inexact(hi);
            }
        }
        out
    }
}

impl ExecutionPlan for SegmentScanExec {
    fn name(&self) -> &str {
        "SegmentScanExec"
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
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

    /// Row and byte estimates from the segments' footers, for DataFusion's join planning
    /// (which side builds the hash table, whether it is broadcast). Always inexact: a pushed
    /// predicate's selectivity is a guess (DataFusion's default 20%), and DataFusion would
    /// answer `count(*)` from an exact count without scanning, skipping Basalt's counters.
    fn partition_statistics(&self, partition: Option<usize>) -> DfResult<Statistics> {
        let segments: Vec<usize> = match partition {
            Some(p) => self.partitions.get(p).cloned().unwrap_or_default(),
            None => (0..self.snapshot.segments.len()).collect(),
        };
        let mut rows: usize = segments
            .iter()
            .map(|&i| match self.snapshot.valid_of(i) {
                Some(valid) => valid.len() as usize,
                None => self.snapshot.segments[i].row_count() as usize,
            })
            .sum();
        if self.predicate.is_some() {
            rows = (rows as f64 * self.keep).ceil() as usize;
        }
        if let Some(limit) = self.limit {
            rows = rows.min(limit);
        }
        // Fixed-width values take their width; strings and lists a guess of 16 bytes.
        let row_bytes: usize = self
            .schema
            .fields()
            .iter()
            .map(|f| f.data_type().primitive_width().unwrap_or(16))
            .sum();
        let column_statistics = self
            .schema
            .fields()
            .iter()
            .zip(&self.projection)
            .map(|(f, &c)| self.column_statistics(&segments, c, f.data_type(), rows))
            .collect();
        Ok(Statistics {
            num_rows: Precision::Inexact(rows),
            total_byte_size: Precision::Inexact(rows.saturating_mul(row_bytes)),
            column_statistics,
        })
    }

    /// Keeps the dynamic filters among those pushed down from above (static ones reached
    /// the table provider as exact filters already). They are reported as not pushed down:
    /// the scan applies them as a superset, never as the final word.
    fn handle_child_pushdown_result(
        &self,
        phase: FilterPushdownPhase,
        child_pushdown_result: ChildPushdownResult,
        _config: &ConfigOptions,
    ) -> DfResult<FilterPushdownPropagation<Arc<dyn ExecutionPlan>>> {
        let filters: Vec<Arc<dyn PhysicalExpr>> = child_pushdown_result
            .parent_filters
            .into_iter()
            .map(|f| f.filter)
            .collect();
        let result = vec![PushedDown::No; filters.len()];
        let dynamic: Vec<_> = filters.into_iter().filter(is_dynamic).collect();
        if phase != FilterPushdownPhase::Post || dynamic.is_empty() {
            return Ok(FilterPushdownPropagation::with_parent_pushdown_result(
                result,
            ));
        }
        let mut node = self.clone();
        let mut all = self.dynamic.exprs().to_vec();
        all.extend(dynamic);
        node.dynamic = Arc::new(DynamicFilters::new(all));
        Ok(
            FilterPushdownPropagation::with_parent_pushdown_result(result)
                .with_updated_node(Arc::new(node)),
        )
    }

    fn execute(
        &self,
        partition: usize,
        _context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let segs = self
            .partitions
            .get(partition)
            .ok_or_else(|| DataFusionError::Internal(format!("no partition {partition}")))?;
        let state = PartitionState {
            segments: segs
                .iter()
                .map(|&i| {
                    (
                        self.snapshot.segments[i].clone(),
                        self.snapshot.valid_of(i).cloned(),
                    )
                })
                .collect(),
            next_segment: 0,
            docs: Vec::new(),
            emitted: 0,
            current: None,
            remaining: self.limit,
            rows: None,
            dynamic_generation: 0,
        };
        let dynamic = self.dynamic.clone();
        let table_schema = self.snapshot.schema.clone();
        let projection = self.projection.clone();
        let predicate = self.predicate.clone();
        let stats = self.stats.clone();
        let batch_size = self.batch_size;
        let schema = self.schema.clone();
        let stream = futures::stream::try_unfold(state, move |mut st| {
            let projection = projection.clone();
            let predicate = predicate.clone();
            let dynamic = dynamic.clone();
            let table_schema = table_schema.clone();
            let stats = stats.clone();
            let schema = schema.clone();
            async move {
                loop {
                    if st.remaining == Some(0) {
                        return Ok(None);
                    }
                    if let Some(seg) = st.current.clone() {
                        if st.emitted < st.docs.len() && !dynamic.is_empty() {
                            // A filter that got its value since the segment was opened (a
                            // partitioned join's build finishing) still filters what is left.
                            if dynamic.generation() != st.dynamic_generation {
                                let (g, now) = dynamic.translate(&schema, &table_schema, false)?;
                                st.dynamic_generation = g;
                                st.refilter(&seg, &now, &stats)?;
                            }
                        }
                        if st.emitted < st.docs.len() {
                            let mut n = (st.docs.len() - st.emitted).min(batch_size);
                            let filtered = st.rows.is_some();
                            if !filtered {
                                if let Some(r) = st.remaining.as_mut() {
                                    n = n.min(*r);
                                    *r -= n;
                                }
                            }
                            let Some(mut batch) =
                                st.next_batch(&seg, &projection, &schema, n, &stats)?
                            else {
                                continue;
                            };
                            if filtered {
                                if let Some(r) = st.remaining.as_mut() {
                                    let k = batch.num_rows().min(*r);
                                    batch = batch.slice(0, k);
                                    *r -= k;
                                }
                            }
                            return Ok(Some((batch, st)));
                        }
                        st.current = None;
                    }
                    let Some((seg, valid)) = st.segments.get(st.next_segment).cloned() else {
                        return Ok(None);
                    };
                    st.next_segment += 1;
                    // Dynamic filters as they are now (a join's build may have finished).
                    let (g, now) = dynamic.translate(&schema, &table_schema, false)?;
                    st.dynamic_generation = g;
                    let combined = both(predicate.as_ref(), now.predicate.clone());
                    st.set_row_filter(now.rows.clone());
                    let Some(matched) =
                        matching_docs(&seg, valid.as_ref(), combined.as_ref(), &stats)?
                    else {
                        continue;
                    };
                    let docs = matched.docs();
                    st.docs = docs;
                    st.emitted = 0;
                    st.current = Some(seg);
                }
            }
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            stream,
        )))
    }
}
