//! [`SegmentAggregateExec`]: a complete GROUP BY over a table's segments. In: the segments a
//! [`SegmentScanExec`] would read, with its predicate; group keys; DataFusion aggregate
//! functions and their arguments. Out: one partition of final aggregate rows, in the schema
//! of the aggregate it replaces.
//!
//! One worker per scan partition (on the blocking pool) evaluates each segment's predicate to
//! docs, maps the docs' dictionary ids to the worker's key ids — each distinct id once per
//! segment — and feeds DataFusion's groups accumulators with dense group ids. Only the columns
//! aggregate arguments read are materialised. Workers are then merged by key value (their
//! accumulator states through `merge_batch`) and the final values evaluated. Memory is
//! reserved from the query's pool, and a dropped query stops the workers at the next batch.

use std::any::Any;
use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{
    Array, ArrayRef, AsArray, DictionaryArray, Int32Array, Int64Array, RecordBatch,
    RecordBatchOptions, UInt64Array,
};
use arrow::compute::{cast, take};
use arrow::datatypes::{DataType, Int32Type, SchemaRef};
use basalt_segment::doc_list;
use basalt_segment::layout::Encoding;
use basalt_segment::predicate::{evaluate_with_stats, EvalStats};
use basalt_segment::reader::{null_positions, Dictionary};
use basalt_segment::{
    candidate_docs, may_match, scanned_docs, simplify_for, simplify_for_blocks, Predicate,
    SegmentReader,
};
use datafusion::common::stats::Precision;
use datafusion::common::Statistics;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryPool, MemoryReservation};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_expr::{EquivalenceProperties, GroupsAccumulatorAdapter, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};
use futures::{StreamExt, TryStreamExt};
use roaring::RoaringBitmap;

use super::counts::RowCounts;
use super::hll::{hash_str, HllGroups};
use super::keys::{GroupMap, KeyInterner, KeyKind, Part, FOREIGN};
use super::partials::{Fragment, Lookup, Partial, PartialAggregates, PartialKey};
use super::sorted_keys;
use super::star::{StarPlan, StarTreeOff};
use crate::row_filter::{RowFilter, RowFilterRun};
use crate::scan::{matching_docs, Matched, ScanStats, SegmentScanExec};

/// Where a group key's values come from.
#[derive(Debug, Clone)]
pub(crate) enum KeyExpr {
    /// A table column (segment column index): grouped on dictionary ids in segments that
    /// dictionary-encode it, on its values elsewhere.
    Column { seg_col: usize },
    /// Any other expression, evaluated on the materialised argument columns.
    Expr(Arc<dyn PhysicalExpr>),
    /// `date_trunc` of a timestamp column (`expr` reads it as column 0 of a one-column batch
    /// of `field`): a block whose zone map truncates to one value is not decoded at all.
    TimeTrunc {
        seg_col: usize,
        expr: Arc<dyn PhysicalExpr>,
        field: arrow::datatypes::FieldRef,
    },
}

#[derive(Debug, Clone)]
pub(crate) struct GroupKey {
    pub(crate) expr: KeyExpr,
    pub(crate) kind: KeyKind,
    pub(crate) out_type: DataType,
}

/// Multi-key segments whose dictionaries multiply to at most this many combinations map
/// each combination to its group once, through a dense table.
const DENSE_COMBINATIONS: usize = 1 << 16;

/// Everything the rule found in the plan it replaces.
#[derive(Debug)]
pub(crate) struct Job {
    /// The [`SegmentScanExec`] whose segments and predicate are aggregated.
    pub(crate) scan: Arc<dyn ExecutionPlan>,
    pub(crate) keys: Vec<GroupKey>,
    pub(crate) aggs: Vec<Arc<AggregateFunctionExpr>>,
    /// Expressions evaluated over each `read_schema` batch before the arguments, and the
    /// schema of their output: a projection DataFusion put between the aggregate and the scan
    /// (common subexpressions computed once).
    pub(crate) pre: Option<(Vec<Arc<dyn PhysicalExpr>>, SchemaRef)>,
    /// Per aggregate, its arguments over `read_schema`, or over `pre`'s output when set.
    pub(crate) args: Vec<Vec<Arc<dyn PhysicalExpr>>>,
    /// Per aggregate: for `approx_distinct` over a string column, that column; its sketch is
    /// fed hashes computed once per dictionary entry ([`HllGroups`]).
    pub(crate) sketch_cols: Vec<Option<usize>>,
    /// Per aggregate: `count(*)`, fed each row's group alone ([`RowCounts`]); its `args`
    /// are empty.
    pub(crate) row_counts: Vec<bool>,
    /// Segment columns materialised per batch, and their schema.
    pub(crate) read_cols: Vec<usize>,
    pub(crate) read_schema: SchemaRef,
    /// Output: the schema of the final aggregate replaced (of the partial one when
    /// `partial`).
    pub(crate) schema: SchemaRef,
    /// Emit each group's accumulator states instead of its final values (a server's
    /// fragment, whose states the broker's final aggregate merges).
    pub(crate) partial: bool,
    /// The aggregation's shape for star-trees, when one could answer it.
    pub(crate) star: Option<StarPlan>,
    /// No GROUP BY and only `count(*)`: a segment's count is its bitmap's cardinality.
    pub(crate) count_only: bool,
}

impl Job {
    fn scan(&self) -> &SegmentScanExec {
        self.scan
            .as_any()
            .downcast_ref::<SegmentScanExec>()
            .expect("built over a SegmentScanExec")
    }

    /// Everything that decides what one segment contributes, given its rows and predicate:
    /// keys, aggregates (function, arguments, options), the projection before them and the
    /// columns read. `Debug` spells out every expression, literal and option.
    fn fingerprint(&self) -> String {
        format!(
            "keys={:?}\naggs={:?}\npre={:?}\nargs={:?}\nsketch={:?}\nread={:?} {:?}\npartial={}",
            self.keys,
            self.aggs,
            self.pre,
            self.args,
            self.sketch_cols,
            self.read_cols,
            self.read_schema,
            self.partial
        )
    }
}

/// Slices with more groups, or fewer rows per group than [`PARTIAL_ROWS_PER_GROUP`], are
/// not kept: merging their states back costs about what aggregating them does.
const PARTIAL_MAX_GROUPS: usize = 1 << 16;
const PARTIAL_ROWS_PER_GROUP: usize = 8;

/// Blocks per slice of a segment, the unit whose aggregation parts are kept (16Ki rows at
/// the default 8,192-row blocks): a moving time range recomputes the slice it cuts, not
/// the segment.
pub(crate) const SLICE_BLOCKS: usize = 2;

/// Where a segment's part is kept: the cache, the plan's fingerprint, the segment's index in
/// the snapshot.
struct Reuse<'a> {
    cache: &'a Arc<PartialAggregates>,
    fragment: &'a Arc<Fragment>,
    index: usize,
    /// Set (for every worker of the query) once a slice had too many groups.
    off: &'a AtomicBool,
}

/// The entry saying an aggregation (under its scan's predicate) has too many groups per
/// slice to keep: segment 0, which no reader has.
fn not_worth_keeping(fragment: &Arc<Fragment>, scan: &SegmentScanExec) -> PartialKey {
    PartialKey {
        segment: 0,
        slice: 0,
        fragment: fragment.clone(),
        predicate: format!("{:?}", scan.predicate()),
    }
}

pub struct SegmentAggregateExec {
    job: Arc<Job>,
    props: Arc<PlanProperties>,
    /// What segments' reusable parts are keyed by ([`Job::fingerprint`]), made at the
    /// first execution that reuses them.
    fragment: std::sync::OnceLock<Arc<Fragment>>,
}

impl fmt::Debug for SegmentAggregateExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SegmentAggregateExec")
            .field("keys", &self.job.keys)
            .finish()
    }
}

impl SegmentAggregateExec {
    pub(crate) fn new(job: Job) -> DfResult<Self> {
        if !job.scan.as_any().is::<SegmentScanExec>() {
            return Err(DataFusionError::Internal(
                "SegmentAggregateExec needs a SegmentScanExec".into(),
            ));
        }
        let props = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(job.schema.clone()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Final,
            Boundedness::Bounded,
        ));
        Ok(SegmentAggregateExec {
            job: Arc::new(job),
            props,
            fragment: std::sync::OnceLock::new(),
        })
    }
}

impl DisplayAs for SegmentAggregateExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let job = &self.job;
        let keys: Vec<&str> = job
            .schema
            .fields()
            .iter()
            .take(job.keys.len())
            .map(|f| f.name().as_str())
            .collect();
        let aggs: Vec<&str> = job.aggs.iter().map(|a| a.name()).collect();
        let scan = job.scan();
        write!(
            f,
            "SegmentAggregateExec: table={}, gby={keys:?}, aggr={aggs:?}, predicate={:?}",
            scan.snapshot().name,
            scan.predicate()
        )?;
        if let Some(star) = &job.star {
            let segments = &scan.snapshot().segments;
            let covered = segments
                .iter()
                .filter(|s| star.may_answer(s, scan.predicate()))
                .count();
            if covered > 0 {
                write!(f, ", star_tree={covered}/{} segments", segments.len())?;
            }
        }
        scan.fmt_dynamic(f)
    }
}

impl ExecutionPlan for SegmentAggregateExec {
    fn name(&self) -> &str {
        "SegmentAggregateExec"
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

    /// At most one group per input row, and per combination of the key columns' distinct
    /// values; a key column's distinct count carries over to its output column. The planner
    /// compares these with the other side of a join (TPC-H Q18's `HAVING` subquery must be
    /// the build side of its semi join, not the 6M-row join it filters).
    fn partition_statistics(&self, _partition: Option<usize>) -> DfResult<Statistics> {
        let scan = self.job.scan();
        let input = scan.partition_statistics(None)?;
        let rows = *input.num_rows.get_value().unwrap_or(&usize::MAX);
        let mut column_statistics = Statistics::unknown_column(&self.job.schema);
        let all: Vec<usize> = (0..scan.snapshot().segments.len()).collect();
        let mut groups: usize = 1;
        for (k, key) in self.job.keys.iter().enumerate() {
            let distinct = match key.expr {
                KeyExpr::Column { seg_col } => scan.distinct_estimate(&all, seg_col, rows),
                _ => None,
            };
            if let (Some(d), Some(c)) = (distinct, column_statistics.get_mut(k)) {
                c.distinct_count = Precision::Inexact(d);
            }
            groups = groups.saturating_mul(distinct.unwrap_or(rows).max(1));
        }
        let rows = if self.job.keys.is_empty() {
            1
        } else {
            groups.min(rows)
        };
        Ok(Statistics {
            num_rows: Precision::Inexact(rows),
            total_byte_size: Precision::Absent,
            column_statistics,
        })
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!(
                "SegmentAggregateExec has one partition, asked for {partition}"
            )));
        }
        let job = self.job.clone();
        let pool = context.memory_pool().clone();
        let deadline = context
            .session_config()
            .get_extension::<crate::engine::QueryBudget>()
            .map(|b| b.deadline);
        let schema = job.schema.clone();
        // Segments' parts are reused when the session allows it and nothing but the pushed
        // predicate filters them (a join's dynamic filter changes with its build).
        let partials = context
            .session_config()
            .get_extension::<PartialAggregates>()
            .filter(|_| !job.keys.is_empty() && !job.scan().has_dynamic_filters())
            .map(|cache| {
                let fragment = self
                    .fragment
                    .get_or_init(|| Arc::new(Fragment::new(self.job.fingerprint())));
                (cache, fragment.clone())
            })
            // An aggregation found to have too many groups per slice is not worth keeping.
            .filter(|(cache, fragment)| {
                let marker = not_worth_keeping(fragment, job.scan());
                !matches!(cache.get(&marker, None), Some(Partial::TooMany))
            });
        // Set when a slice turns out to have too many groups: the rest is aggregated in
        // place.
        let off = Arc::new(AtomicBool::new(false));
        // Star-trees answer segments unless the session turned them off or a join's filter
        // reaches the scan.
        let star = job.star.is_some()
            && !job.scan().has_dynamic_filters()
            && context
                .session_config()
                .get_extension::<StarTreeOff>()
                .is_none();
        let parts = match partials {
            None => key_parts(&job, star),
            Some(_) => None,
        };
        let run = async move {
            let cancel = CancelOnDrop(Arc::new(AtomicBool::new(false)));
            let mut handles = Vec::new();
            let all: Vec<usize> = (0..job.scan().snapshot().segments.len()).collect();
            // Split by key: every worker reads every segment, for the keys it owns.
            let by_segments = job.scan().segment_partitions().iter().cloned();
            let work: Vec<(Vec<usize>, Option<Part>)> = match parts {
                Some(count) => (0..count)
                    .map(|index| (all.clone(), Some(Part { index, count })))
                    .collect(),
                None => by_segments.map(|segs| (segs, None)).collect(),
            };
            // Shares run on blocking threads, which the OS time-slices with other queries'
            // planning on the query threads. Shares whose segments the predicate leaves few
            // docs to read in (`INLINE_DOCS` together, from zone maps and bloom filters)
            // run here instead, without waking a thread and waiting for it (two wake-ups,
            // ~50-60 µs each on two cores): a range of the last seconds, a count whose time
            // range cuts a block or two (the blocks it covers are counted unread), or a
            // segment the predicate rules out (no work at all).
            // Not when parts are reused: a segment a bloom filter rules out still looks its
            // slices up, and may wait (up to `FLIGHT_WAIT`) for one another query computes.
            // (Running the last share here whatever its size let a heavy aggregation hold a
            // query thread: a light query's p99 rose from 22 to ~110 ms beside two heavy
            // ones.)
            let mut budget = INLINE_DOCS;
            let mut inline = Vec::new();
            for (segs, part) in work {
                let share = Share {
                    job: job.clone(),
                    pool: pool.clone(),
                    all: all.clone(),
                    partials: partials.clone(),
                    off: off.clone(),
                    star,
                    flag: cancel.0.clone(),
                    deadline,
                };
                let docs = match partials {
                    None => candidate_docs_of(&job, &segs),
                    Some(_) => None,
                };
                match docs {
                    Some(docs) if docs <= budget => {
                        budget -= docs;
                        inline.push((share, segs, part));
                    }
                    _ => handles.push(tokio::task::spawn_blocking(move || share.run(&segs, part))),
                }
            }
            let mut here = Vec::with_capacity(inline.len());
            for (share, segs, part) in inline {
                here.push(share.run(&segs, part)?);
            }
            let mut merged: Option<Worker> = None;
            let mut batches = Vec::new();
            let mut done = Vec::with_capacity(handles.len() + 1);
            for h in handles {
                done.push(
                    h.await
                        .map_err(|e| DataFusionError::External(Box::new(e)))??,
                );
            }
            done.extend(here);
            for w in done {
                match merged.as_mut() {
                    // Parts hold disjoint groups: each gives its own rows.
                    _ if w.part.is_some() => batches.extend(w.finish(&job)?),
                    None => merged = Some(w),
                    Some(m) => m.merge(w)?,
                }
            }
            if let Some(w) = merged {
                batches.extend(w.finish(&job)?);
            }
            drop(cancel);
            Ok::<_, DataFusionError>(futures::stream::iter(batches.into_iter().map(Ok)))
        };
        let stream = futures::stream::once(run).try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            schema,
            stream.boxed(),
        )))
    }
}

/// A grouped count reads its key column's index instead of its rows ([`Worker::
/// counts_from_index`]) when the segment's dictionary has at most this many values, the
/// docs matched are at least [`INDEX_COUNT_DOCS_PER_VALUE`] per value, and at least half the
/// segment's docs match. Each value's index entry is decoded whole, whatever share of its
/// docs match: over a whole segment (release build, 10M events, 1M-row segments) the 30
/// event types' entries took 0.44x the time of reading the rows' ids, but 200 countries'
/// entries over the ~29% of a segment 5 minutes cover took 1.24x.
const INDEX_COUNT_VALUES: usize = 4096;
const INDEX_COUNT_DOCS_PER_VALUE: u64 = 256;

/// Fewest entries of a GROUP BY key's largest segment dictionary for which workers split the
/// key's values instead of the segments.
const SPLIT_KEYS: u32 = 1 << 16;

/// Most dictionary entries, over all segments, whose key ids a worker merging sorted
/// dictionaries holds at once (up to 128 MiB with the padding); larger tables are hashed.
const SORTED_ENTRIES_MAX: usize = 1 << 24;

/// How many workers split the key's values between them, or `None` to split the segments:
/// one GROUP BY column, dictionary-encoded in every segment, with many entries in some
/// segment (as many groups at least), no filter (each worker would evaluate it on every
/// segment: 35 -> 56 ms on a filtered 20k-url group-by) and no star-tree to answer from
/// (`star`: trees may answer).
fn key_parts(job: &Job, star: bool) -> Option<u32> {
    let scan = job.scan();
    let workers = scan.segment_partitions().len();
    let [GroupKey {
        expr: KeyExpr::Column { seg_col },
        ..
    }] = job.keys.as_slice()
    else {
        return None;
    };
    if workers < 2 || scan.has_dynamic_filters() || scan.predicate().is_some() {
        return None;
    }
    let mut entries = 0;
    for seg in &scan.snapshot().segments {
        if star && !seg.footer().star_trees.is_empty() {
            return None;
        }
        match seg.footer().columns.get(*seg_col).map(|c| &c.encoding) {
            Some(Encoding::Dictionary { cardinality, .. }) => entries = entries.max(*cardinality),
            _ => return None,
        }
    }
    (entries >= SPLIT_KEYS).then_some(workers as u32)
}

/// Most docs, over all the shares of one query, that may run on the query's own thread:
/// four blocks of the default size. The bound keeps a heavy aggregation off the query
/// threads, where it would delay other queries' planning (measured when an unbounded last
/// share ran there: a light query's p99 from 22 to ~110 ms beside two heavy ones).
const INLINE_DOCS: u64 = 4 * 8192;

/// At most how many docs a worker given segments `segs` reads: the docs the scan's
/// predicate can select there, from footer statistics, bloom filters and zone maps
/// (`may_match`, `candidate_docs`); every doc without a predicate. A count without keys
/// reads no doc it selects, only what its predicate decodes (`scanned_docs`: the blocks a
/// time range cuts, none without a predicate). `None` when a join's dynamic filter reaches
/// the scan (its selectivity is known only once its build is done).
fn candidate_docs_of(job: &Job, segs: &[usize]) -> Option<u64> {
    let scan = job.scan();
    let snap = scan.snapshot();
    if segs.is_empty() {
        return Some(0);
    }
    if scan.has_dynamic_filters() {
        return None;
    }
    let mut docs = 0u64;
    for &i in segs {
        let seg = &snap.segments[i];
        docs = docs.saturating_add(match scan.predicate() {
            None if job.count_only => 0,
            None => seg.row_count() as u64,
            Some(p) => match may_match(seg, p) {
                Ok(false) => 0,
                _ if job.count_only => scanned_docs(seg, p),
                _ => candidate_docs(seg, p),
            },
        });
    }
    Some(docs)
}

/// One worker's share of a segment aggregation: its segments (or, split by key, its part
/// of every segment's keys), and what every share reads.
struct Share {
    job: Arc<Job>,
    pool: Arc<dyn MemoryPool>,
    all: Vec<usize>,
    partials: Option<(Arc<PartialAggregates>, Arc<Fragment>)>,
    /// Set once a slice had too many groups to keep.
    off: Arc<AtomicBool>,
    star: bool,
    /// Set when the aggregation's stream is dropped.
    flag: Arc<AtomicBool>,
    deadline: Option<Instant>,
}

impl Share {
    /// Aggregates segments `segs` (for the keys of `part`, when split by key).
    fn run(&self, segs: &[usize], part: Option<Part>) -> DfResult<Worker> {
        let (job, pool, off) = (self.job.as_ref(), &self.pool, self.off.as_ref());
        let cancel = Cancel::new(&self.flag, self.deadline);
        let mut w = Worker::new(job, pool, &self.all)?;
        w.part = part;
        if let Some(p) = part {
            w.merge_sorted_keys(job, p, &cancel)?;
        }
        let snap = job.scan().snapshot();
        for &i in segs {
            let (seg, valid) = (&snap.segments[i], snap.valid_of(i));
            w.next_ids = w.sorted_ids.as_mut().map(|m| std::mem::take(&mut m[i]));
            if self.star && valid.is_none() && w.star_tree(job, seg, &cancel)? {
                continue;
            }
            match &self.partials {
                Some((cache, fragment))
                    if cache.keeps(seg.row_count()) && !off.load(Ordering::Relaxed) =>
                {
                    let at = Reuse {
                        cache,
                        fragment,
                        index: i,
                        off,
                    };
                    w.segment_reusing(job, pool, at, seg, valid, &cancel)?
                }
                _ => w.segment(job, seg, valid, &cancel)?,
            }
        }
        Ok(w)
    }
}

/// When a worker stops: its aggregation's stream was dropped (`flag`), or the query's
/// deadline passed (so a worker stops on time even before the abort reaches the stream).
pub(super) struct Cancel<'a> {
    flag: &'a AtomicBool,
    deadline: Option<Instant>,
}

impl<'a> Cancel<'a> {
    pub(super) fn new(flag: &'a AtomicBool, deadline: Option<Instant>) -> Self {
        Cancel { flag, deadline }
    }

    pub(super) fn stopped(&self) -> bool {
        self.flag.load(Ordering::Relaxed) || self.deadline.is_some_and(|d| Instant::now() >= d)
    }
}

/// Tells the workers to stop when the query's future is dropped (timeout, cancel).
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn ext(e: basalt_segment::SegmentError) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// How one key's values are found in the current segment.
enum Source {
    /// Dictionary ids, each mapped to a key id on first use (`u32::MAX`: not yet), or all
    /// at once up front.
    Dict {
        seg_col: usize,
        dict: Arc<Dictionary>,
        nulls: Arc<RoaringBitmap>,
        key_ids: Vec<u32>,
        /// Entries of `key_ids` not mapped yet: rows are looked at for first uses only
        /// while some are left (0 from the start when all were interned up front).
        unmapped: usize,
    },
    /// A column without a dictionary in this segment.
    Values {
        seg_col: usize,
    },
    Expr(Arc<dyn PhysicalExpr>),
    TimeTrunc {
        seg_col: usize,
        expr: Arc<dyn PhysicalExpr>,
        schema: SchemaRef,
    },
}

/// How many key ids a dictionary of `entries` entries gets: padded to a power of two, so that
/// a row's lookup (`id & mask`, [`map_ids`]) needs no bounds check.
pub(crate) fn key_ids_len(entries: usize) -> usize {
    entries.max(1).next_power_of_two()
}

/// Appends to `out` each id's entry of `table` (a power of two long, see `Source::Dict`),
/// through `to`. Out of the row loop's function, so that the table stays in registers.
#[inline(never)]
fn map_ids<T>(ids: &[u32], table: &[u32], out: &mut Vec<T>, to: impl Fn(u32) -> T + Copy) {
    if table.is_empty() {
        return;
    }
    let mask = table.len() - 1;
    out.extend(ids.iter().map(|&id| to(table[id as usize & mask])));
}

/// Evaluates a one-column expression over `values`.
fn eval_single(
    expr: &Arc<dyn PhysicalExpr>,
    schema: &SchemaRef,
    values: ArrayRef,
) -> DfResult<ArrayRef> {
    let n = values.len();
    let batch = RecordBatch::try_new(schema.clone(), vec![values])?;
    expr.evaluate(&batch)?.into_array(n)
}

/// Sketch hashes of one string column's rows in one segment: through its dictionary, or
/// (raw string columns) value by value.
enum SketchHashes {
    Dict(DictHashes),
    Rows { seg_col: usize },
}

impl SketchHashes {
    /// Per row of `docs`: its value's sketch hash, null for null rows.
    fn row_hashes(&mut self, seg: &SegmentReader, docs: &[u32]) -> DfResult<ArrayRef> {
        match self {
            SketchHashes::Dict(d) => d.row_hashes(seg, docs),
            SketchHashes::Rows { seg_col } => {
                let values = cast(
                    &seg.read_column(*seg_col, docs).map_err(ext)?,
                    &DataType::Utf8,
                )?;
                let strings = values.as_string::<i32>();
                let hashes: Vec<u64> = (0..strings.len())
                    .map(|i| hash_str(strings.value(i)))
                    .collect();
                Ok(Arc::new(UInt64Array::new(
                    hashes.into(),
                    strings.nulls().cloned(),
                )))
            }
        }
    }
}

/// Sketch hashes of one string column's dictionary entries in one segment, computed on
/// first use.
struct DictHashes {
    seg_col: usize,
    dict: Arc<Dictionary>,
    nulls: Arc<RoaringBitmap>,
    hashes: Vec<u64>,
    done: Vec<bool>,
}

impl DictHashes {
    /// `rows`: how many docs will be hashed; when they outnumber the dictionary, every entry
    /// is hashed up front, in dictionary order.
    fn new(
        seg_col: usize,
        dict: Arc<Dictionary>,
        nulls: Arc<RoaringBitmap>,
        rows: u64,
    ) -> DfResult<Self> {
        let Dictionary::Str(strings) = dict.as_ref() else {
            return Err(DataFusionError::Internal(format!(
                "column {seg_col}: sketch over a non-string dictionary"
            )));
        };
        let n = dict.len();
        let (hashes, done) = if rows >= n as u64 {
            (
                strings.iter().map(|v| v.map_or(0, hash_str)).collect(),
                vec![true; n],
            )
        } else {
            (vec![0; n], vec![false; n])
        };
        Ok(DictHashes {
            seg_col,
            dict,
            nulls,
            hashes,
            done,
        })
    }

    /// Per row of `docs`: its value's sketch hash, null for null rows.
    fn row_hashes(&mut self, seg: &SegmentReader, docs: &[u32]) -> DfResult<ArrayRef> {
        let Dictionary::Str(strings) = self.dict.as_ref() else {
            unreachable!("checked in new");
        };
        let ids = seg
            .read_ids(self.seg_col, docs)
            .map_err(ext)?
            .ok_or_else(|| DataFusionError::Internal("string column without ids".into()))?;
        let null_rows = if self.nulls.is_empty() {
            Vec::new()
        } else {
            null_positions(&self.nulls, docs)
        };
        let mut is_null = vec![false; ids.len()];
        for &r in &null_rows {
            is_null[r] = true;
        }
        let mut out = Vec::with_capacity(ids.len());
        for (&id, &null) in ids.iter().zip(&is_null) {
            let i = id as usize;
            if null || i >= self.hashes.len() {
                // Null rows carry a placeholder id; a bad id is caught by the reader.
                out.push(0);
                continue;
            }
            if !self.done[i] {
                self.hashes[i] = hash_str(strings.value(i));
                self.done[i] = true;
            }
            out.push(self.hashes[i]);
        }
        let nulls = (!null_rows.is_empty())
            .then(|| arrow::buffer::NullBuffer::from_iter(is_null.iter().map(|n| !n)));
        Ok(Arc::new(UInt64Array::new(out.into(), nulls)))
    }
}

/// One segment's matched docs while its blocks are aggregated, and the dynamic filters'
/// state (what changes mid-segment).
struct Reading {
    matched: Matched,
    /// The matched docs as a list, made at the first block the predicate covers in part
    /// (listing a bitmap's members is cheaper all at once than block by block).
    listed: Option<Vec<u32>>,
    rows: Option<RowFilterRun>,
    seen_generation: u64,
}

impl Reading {
    fn new(matched: Matched, rows: Option<RowFilterRun>, seen_generation: u64) -> Reading {
        Reading {
            matched,
            listed: None,
            rows,
            seen_generation,
        }
    }
}

/// `p` as it reads on `seg` (on its blocks `blocks` only, when given), `None` when every
/// doc there meets it.
pub(crate) fn read_on(
    seg: &SegmentReader,
    p: &Predicate,
    blocks: Option<Range<usize>>,
) -> Option<Predicate> {
    let p = match blocks {
        Some(range) => simplify_for_blocks(seg, p, range),
        None => simplify_for(seg, p),
    };
    (p != Predicate::Const(true)).then_some(p)
}

/// The slices of `seg` ([`SLICE_BLOCKS`] blocks each) that `predicate` (as it reads on the
/// segment) may match: each one's blocks and its key in the cache of parts, which holds the
/// predicate as it reads on those blocks.
pub(crate) fn slice_keys<'a>(
    seg: &'a SegmentReader,
    predicate: Option<&'a Predicate>,
    fragment: &'a Arc<Fragment>,
) -> impl Iterator<Item = (Range<usize>, PartialKey)> + 'a {
    let blocks = block_count(seg);
    (0..blocks).step_by(SLICE_BLOCKS).filter_map(move |from| {
        let range = from..(from + SLICE_BLOCKS).min(blocks);
        // No condition is `None` whether the segment or only this slice is covered.
        let slice_predicate = predicate.and_then(|p| read_on(seg, p, Some(range.clone())));
        if slice_predicate == Some(Predicate::Const(false)) {
            return None;
        }
        let key = PartialKey {
            segment: seg.instance_id(),
            slice: from as u32,
            fragment: fragment.clone(),
            predicate: format!("{slice_predicate:?}"),
        };
        Some((range, key))
    })
}

/// How many blocks `seg` has.
pub(crate) fn block_count(seg: &SegmentReader) -> usize {
    (seg.row_count() as usize).div_ceil(seg.block_rows().max(1))
}

/// The rows of blocks `range` of `seg`.
pub(crate) fn range_rows(seg: &SegmentReader, range: &Range<usize>) -> usize {
    range.clone().map(|b| seg.block_len(b)).sum()
}

/// One worker's groups and accumulators.
struct Worker {
    keys: Vec<KeyInterner>,
    groups: GroupMap,
    accs: Vec<Box<dyn GroupsAccumulator>>,
    reservation: MemoryReservation,
    /// Without GROUP BY: whether any row or state reached the accumulators (if none, the
    /// one answer row is what DataFusion gives over no rows: NULL sums, zero counts).
    fed: bool,
    /// The key values this worker aggregates, when each worker reads every segment.
    part: Option<Part>,
    /// The key ids of each segment's dictionary entries (by snapshot index), when they were
    /// numbered by merging the sorted dictionaries (`sorted_keys`): the interner then has no
    /// hash table to find values in, and every segment must come with its ids.
    sorted_ids: Option<Vec<Vec<u32>>>,
    /// The ids of the segment being read, taken from `sorted_ids`.
    next_ids: Option<Vec<u32>>,
}

impl Worker {
    /// A worker whose integer keys are sized by the bounds of `segments` (snapshot indexes).
    fn new(job: &Job, pool: &Arc<dyn MemoryPool>, segments: &[usize]) -> DfResult<Worker> {
        let accs = job
            .aggs
            .iter()
            .zip(job.sketch_cols.iter().zip(&job.row_counts))
            .map(|(a, (sketch, &rows))| {
                if sketch.is_some() {
                    Ok(Box::new(HllGroups::default()) as Box<dyn GroupsAccumulator>)
                } else if rows {
                    Ok(Box::new(RowCounts::default()) as Box<dyn GroupsAccumulator>)
                } else if a.groups_accumulator_supported() {
                    a.create_groups_accumulator()
                } else {
                    let a = a.clone();
                    Ok(Box::new(GroupsAccumulatorAdapter::new(move || {
                        a.create_accumulator()
                    })) as Box<dyn GroupsAccumulator>)
                }
            })
            .collect::<DfResult<Vec<_>>>()?;
        let mut w = Worker {
            keys: job
                .keys
                .iter()
                .map(|k| {
                    let interner = KeyInterner::new(k.kind);
                    // A column's footer bounds let integer keys skip hashing, when the range
                    // is not much wider than the rows (the table is allocated whole).
                    let KeyExpr::Column { seg_col } = k.expr else {
                        return interner;
                    };
                    let scan = job.scan();
                    let rows: u64 = segments
                        .iter()
                        .map(|&i| scan.snapshot().segments[i].row_count() as u64)
                        .sum();
                    match scan.int_bounds(segments, seg_col) {
                        Some((lo, hi)) if ((hi as i128 - lo as i128) as u64) < rows * 4 => {
                            interner.with_int_range(lo, hi)
                        }
                        _ => interner,
                    }
                })
                .collect(),
            groups: GroupMap::new(job.keys.len()),
            accs,
            reservation: MemoryConsumer::new("SegmentAggregateExec").register(pool),
            fed: false,
            part: None,
            sorted_ids: None,
            next_ids: None,
        };
        if job.count_only {
            // Without GROUP BY there is one group, even over no rows (count 0).
            w.add_row_count(0)?;
        }
        Ok(w)
    }

    fn size(&self) -> usize {
        let sorted: usize = self
            .sorted_ids
            .iter()
            .flatten()
            .map(|v| v.capacity() * 4)
            .sum();
        self.keys.iter().map(|k| k.size()).sum::<usize>()
            + sorted
            + self.groups.size()
            + self.accs.iter().map(|a| a.size()).sum::<usize>()
    }

    /// As part `part` of a key split by value: when the key is one string column, read whole
    /// in every segment of the snapshot (no valid-docs bitmap), numbers the part's values by
    /// merging the segments' sorted dictionaries (`sorted_keys`) and keeps each segment's key
    /// ids for [`Self::blocks`]. Every part decides alike from the same snapshot, so the
    /// parts own values by range or all by hash, never a mix.
    fn merge_sorted_keys(&mut self, job: &Job, part: Part, cancel: &Cancel<'_>) -> DfResult<()> {
        let snap = job.scan().snapshot();
        let [GroupKey {
            expr: KeyExpr::Column { seg_col },
            kind: KeyKind::Bytes,
            ..
        }] = job.keys.as_slice()
        else {
            return Ok(());
        };
        if !snap.valid.is_empty() {
            return Ok(());
        }
        let mut held = Vec::with_capacity(snap.segments.len());
        for seg in &snap.segments {
            match seg.dictionary(*seg_col).map_err(ext)? {
                Some(d) => held.push(d),
                None => return Ok(()),
            }
        }
        let dicts: Vec<&arrow::array::StringArray> = held
            .iter()
            .filter_map(|d| match d.as_ref() {
                Dictionary::Str(a) => Some(a),
                _ => None,
            })
            .collect();
        if dicts.len() != held.len() {
            return Ok(());
        }
        // Every segment's ids are held at once (the hash path holds one segment's).
        if dicts.iter().map(|d| d.len()).sum::<usize>() > SORTED_ENTRIES_MAX {
            return Ok(());
        }
        // Reserved before they are allocated (padded as `intern_sorted` pads them).
        let padded: usize = dicts.iter().map(|d| key_ids_len(d.len())).sum();
        let before = self.size();
        self.reservation.try_resize(before + padded * 4)?;
        let range = sorted_keys::bounds(&dicts, part);
        let ids = sorted_keys::intern_sorted(&mut self.keys[0], &dicts, range, cancel)?;
        self.sorted_ids = Some(ids);
        let size = self.size();
        self.reservation.try_resize(size)
    }

    /// Key id for dictionary id `id` (or NULL), interning the entry on first use.
    // Per row: always inlined into the row loops, the interning of a new entry never (how
    // rustc split the crate into codegen units once decided it, costing a call per row:
    // +22% CPU on a dictionary-keyed group-by).
    #[inline(always)]
    fn dict_key(
        interner: &mut KeyInterner,
        dict: &Dictionary,
        key_ids: &mut [u32],
        id: Option<u32>,
        part: Option<Part>,
    ) -> DfResult<u32> {
        let Some(id) = id else {
            return Ok(interner.intern_null());
        };
        let slot = key_ids
            .get_mut(id as usize)
            .ok_or_else(|| DataFusionError::Internal(format!("dictionary id {id} out of range")))?;
        if *slot == u32::MAX {
            *slot = interner.intern_dict_entry(dict, id, part)?;
        }
        Ok(*slot)
    }

    fn segment(
        &mut self,
        job: &Job,
        seg: &SegmentReader,
        valid: Option<&Arc<RoaringBitmap>>,
        cancel: &Cancel<'_>,
    ) -> DfResult<()> {
        let scan = job.scan();
        // With what a join's build (on the other side) has learnt by now: as a predicate
        // where the indexes can answer it, else row by row on its columns (a large build's
        // hash-table lookup) before any other column is read.
        let seen_generation = scan.dynamic_generation();
        let (predicate, rows) = scan.filters_now()?;
        // As it reads on this segment: a time range covering it whole is no condition. (Not
        // with a join's filter in it: its key lists would be looked up twice.)
        let predicate = match scan.has_dynamic_filters() {
            true => predicate,
            false => predicate.and_then(|p| read_on(seg, &p, None)),
        };
        let rows = rows.map(RowFilter::start);
        // Every part reads every segment: only the first counts what it read.
        let ignored = ScanStats::default();
        let stats = match self.part {
            Some(p) if p.index > 0 => &ignored,
            _ => scan.stats(),
        };
        let Some(matched) = matching_docs(seg, valid, predicate.as_ref(), stats)? else {
            return Ok(());
        };
        if matched.len() == 0 {
            return Ok(());
        }
        if job.count_only {
            // Only count(*) without keys (see the rule): the bitmap's cardinality is the count.
            return self.add_row_count(matched.len());
        }
        if rows.is_none() && self.counts_from_index(job, seg, &matched)? {
            return Ok(());
        }
        let mut reading = Reading::new(matched, rows, seen_generation);
        self.blocks(job, seg, &mut reading, 0..block_count(seg), cancel)
    }

    /// Aggregates the matched docs of blocks `range` of a segment.
    fn blocks(
        &mut self,
        job: &Job,
        seg: &SegmentReader,
        reading: &mut Reading,
        range: std::ops::Range<usize>,
        cancel: &Cancel<'_>,
    ) -> DfResult<()> {
        let scan = job.scan();
        let part = self.part;
        let Reading {
            matched,
            listed,
            rows,
            seen_generation,
        } = reading;
        // At most this many docs are read here (a slice reads a few blocks of the segment).
        let expected = (matched.len() as usize).min(range_rows(seg, &range));
        // Every row of the segment is read: each dictionary entry is some row's value (a
        // segment's dictionaries hold exactly its rows' values), so all are interned up front,
        // in id order.
        let whole = matches!(matched, Matched::All(_))
            && rows.is_none()
            && !scan.has_dynamic_filters()
            && range == (0..block_count(seg));
        let mut sources = Vec::with_capacity(job.keys.len());
        for k in &job.keys {
            sources.push(match &k.expr {
                KeyExpr::Column { seg_col } => match seg.dictionary(*seg_col).map_err(ext)? {
                    Some(dict) => {
                        let interner = &mut self.keys[sources.len()];
                        // Padded to a power of two, so that a row's lookup (`id & mask`)
                        // needs no bounds check: the reader refuses ids past the dictionary,
                        // so the padding is never read.
                        let (key_ids, unmapped) = match self.next_ids.take() {
                            Some(ids) if ids.len() == key_ids_len(dict.len()) => (ids, 0),
                            Some(_) => {
                                return Err(DataFusionError::Internal(
                                    "merged key ids do not cover the segment's dictionary".into(),
                                ))
                            }
                            None if self.sorted_ids.is_some() => {
                                return Err(DataFusionError::Internal(
                                    "a segment without merged key ids".into(),
                                ))
                            }
                            None => {
                                interner.reserve(dict.len().min(expected));
                                let mut ids = vec![u32::MAX; key_ids_len(dict.len())];
                                let mut unmapped = dict.len();
                                if whole {
                                    interner.intern_dict(
                                        &dict,
                                        &mut ids[..dict.len()],
                                        self.part,
                                    )?;
                                    unmapped = 0;
                                }
                                (ids, unmapped)
                            }
                        };
                        Source::Dict {
                            seg_col: *seg_col,
                            key_ids,
                            dict,
                            nulls: seg.nulls(*seg_col).map_err(ext)?,
                            unmapped,
                        }
                    }
                    None => Source::Values { seg_col: *seg_col },
                },
                KeyExpr::Expr(e) => Source::Expr(e.clone()),
                KeyExpr::TimeTrunc {
                    seg_col,
                    expr,
                    field,
                } => Source::TimeTrunc {
                    seg_col: *seg_col,
                    expr: expr.clone(),
                    schema: Arc::new(arrow::datatypes::Schema::new(vec![field.clone()])),
                },
            });
        }
        // Several dictionary keys with few combinations: one dense table from the combination
        // of dictionary ids (NULL as id `len`) to the group.
        let mut dense: Option<(Vec<usize>, Vec<u32>)> = None;
        if sources.len() > 1 {
            let mut strides = Vec::new();
            let mut combos = 1usize;
            for s in &sources {
                match s {
                    Source::Dict { dict, .. } => {
                        strides.push(combos);
                        combos = combos.saturating_mul(dict.len() + 1);
                    }
                    _ => combos = usize::MAX,
                }
            }
            if combos <= DENSE_COMBINATIONS {
                dense = Some((strides, vec![u32::MAX; combos]));
            }
        }
        let mut sketches: Vec<Option<SketchHashes>> = Vec::with_capacity(job.sketch_cols.len());
        for d in &job.sketch_cols {
            sketches.push(match d {
                None => None,
                Some(col) => Some(match seg.dictionary(*col).map_err(ext)? {
                    Some(dict) => SketchHashes::Dict(DictHashes::new(
                        *col,
                        dict,
                        seg.nulls(*col).map_err(ext)?,
                        expected as u64,
                    )?),
                    // Raw strings: each row's value is hashed.
                    None => SketchHashes::Rows { seg_col: *col },
                }),
            });
        }
        let nkeys = sources.len();
        // One dictionary key, not split between workers (whole segment or not): rows are
        // mapped straight to their groups.
        let direct = nkeys == 1
            && dense.is_none()
            && part.is_none()
            && matches!(sources[0], Source::Dict { .. });
        let mut codes: Vec<Vec<u32>> = vec![Vec::new(); nkeys];
        let mut groups: Vec<usize> = Vec::new();
        let mut tuple = vec![0u32; nkeys];
        // Block by block: a block the predicate covers whole is read without per-doc picking.
        let block_rows = seg.block_rows();
        let mut docs: Vec<u32> = Vec::with_capacity(block_rows);
        let mut mine: Vec<u32> = Vec::new();
        for b in range {
            // A filter that got its value since the segment was opened filters the blocks
            // left: a partitioned join's last build, or a broadcast join whose leader was
            // still writing its filter when the barrier released this probe side.
            let g = scan.dynamic_generation();
            if g != *seen_generation {
                *seen_generation = g;
                let (now, now_rows) = scan.filters_now()?;
                *rows = now_rows.map(RowFilter::start);
                if let Some(p) = now {
                    let pass =
                        evaluate_with_stats(seg, &p, &mut EvalStats::default()).map_err(ext)?;
                    let before = std::mem::replace(matched, Matched::All(0));
                    *matched = match before {
                        Matched::All(_) => Matched::Some(pass),
                        Matched::Some(bm) => Matched::Some(bm & pass),
                    };
                    *listed = None;
                }
            }
            let start = (b * block_rows) as u32;
            let end = start + seg.block_len(b) as u32;
            docs.clear();
            match &*matched {
                Matched::All(_) => docs.extend(start..end),
                Matched::Some(bm) if bm.contains_range(start..end) => docs.extend(start..end),
                Matched::Some(bm) => {
                    let all = listed.get_or_insert_with(|| doc_list::docs(bm));
                    let from = all.partition_point(|&d| d < start);
                    let to = from + all[from..].partition_point(|&d| d < end);
                    docs.extend_from_slice(&all[from..to]);
                }
            }
            if docs.is_empty() {
                continue;
            }
            if let Some(rf) = rows {
                let n = docs.len();
                docs = rf
                    .filter(&docs, |c, d| seg.read_column(scan.projection()[c], d))?
                    .docs;
                scan.stats()
                    .dynamic_removed
                    .fetch_add((n - docs.len()) as u64, Ordering::Relaxed);
                if !rf.is_active() {
                    *rows = None;
                }
                if docs.is_empty() {
                    continue;
                }
            }
            let mut chunk = docs.as_slice();
            if cancel.stopped() {
                return Err(DataFusionError::Execution("query cancelled".into()));
            }
            let read = |chunk: &[u32]| -> DfResult<RecordBatch> {
                if job.read_cols.is_empty() {
                    return Ok(RecordBatch::try_new_with_options(
                        job.read_schema.clone(),
                        vec![],
                        &RecordBatchOptions::new().with_row_count(Some(chunk.len())),
                    )?);
                }
                let b = seg.read_batch(&job.read_cols, chunk).map_err(ext)?;
                Ok(RecordBatch::try_new(
                    job.read_schema.clone(),
                    b.columns().to_vec(),
                )?)
            };
            // A part reads the other columns only for the rows whose key it owns (its key is
            // a column, never an expression over the batch).
            let mut batch = match part {
                None => Some(read(chunk)?),
                Some(_) => None,
            };
            // Per key and row: a key id, or (dense) a dictionary id with NULL as `len`.
            for (k, src) in sources.iter_mut().enumerate() {
                let out = &mut codes[k];
                out.clear();
                match src {
                    Source::Dict {
                        seg_col,
                        dict,
                        nulls,
                        key_ids,
                        unmapped,
                    } => {
                        let ids = seg.read_ids(*seg_col, chunk).map_err(ext)?.ok_or_else(|| {
                            DataFusionError::Internal("dictionary column without ids".into())
                        })?;
                        let null_rows = if nulls.is_empty() {
                            Vec::new()
                        } else {
                            null_positions(nulls, chunk)
                        };
                        if dense.is_some() {
                            out.extend_from_slice(&ids);
                            for &r in &null_rows {
                                out[r] = dict.len() as u32;
                            }
                        } else {
                            // Intern the ids not seen yet in this segment, then map every row
                            // with a plain lookup. Null rows carry a placeholder id that must
                            // not be interned, so they are patched afterwards.
                            if *unmapped > 0 {
                                let interner = &mut self.keys[k];
                                let mut nr = null_rows.iter().peekable();
                                for (r, &id) in ids.iter().enumerate() {
                                    if nr.peek() == Some(&&r) {
                                        nr.next();
                                        continue;
                                    }
                                    let slot = key_ids.get_mut(id as usize).ok_or_else(|| {
                                        DataFusionError::Internal(format!(
                                            "dictionary id {id} out of range"
                                        ))
                                    })?;
                                    if *slot == u32::MAX {
                                        *slot = interner.intern_dict_entry(dict, id, part)?;
                                        *unmapped -= 1;
                                        if *unmapped == 0 {
                                            break;
                                        }
                                    }
                                }
                            }
                            // Placeholder ids of null rows may be unmapped (u32::MAX) and are
                            // overwritten below.
                            if direct {
                                groups.clear();
                                map_ids(&ids, key_ids, &mut groups, |k| k as usize);
                            } else {
                                map_ids(&ids, key_ids, out, |k| k);
                            }
                            if !null_rows.is_empty() {
                                let null_id = match part {
                                    Some(p) if !p.owns_null() => FOREIGN,
                                    _ => self.keys[k].intern_null(),
                                };
                                for &r in &null_rows {
                                    match direct {
                                        true => groups[r] = null_id as usize,
                                        false => out[r] = null_id,
                                    }
                                }
                            }
                        }
                    }
                    Source::Values { seg_col } => {
                        let arr = seg.read_column(*seg_col, chunk).map_err(ext)?;
                        self.keys[k].intern_array(&arr, out)?;
                    }
                    Source::Expr(e) => {
                        let batch = batch.as_ref().ok_or_else(|| {
                            DataFusionError::Internal("a part's key is an expression".into())
                        })?;
                        let arr = e.evaluate(batch)?.into_array(chunk.len())?;
                        self.keys[k].intern_array(&arr, out)?;
                    }
                    Source::TimeTrunc {
                        seg_col,
                        expr,
                        schema,
                    } => {
                        let block = &seg.footer().columns[*seg_col].blocks[b];
                        let constant = match block.zone {
                            Some(z) if block.null_count == 0 => {
                                let ends: ArrayRef =
                                    Arc::new(arrow::array::TimestampMillisecondArray::from(vec![
                                        z.min, z.max,
                                    ]));
                                let t = eval_single(expr, schema, ends)?;
                                (t.null_count() == 0
                                    && arrow::compute::kernels::cmp::eq(
                                        &t.slice(0, 1),
                                        &t.slice(1, 1),
                                    )?
                                    .value(0))
                                .then_some(t)
                            }
                            _ => None,
                        };
                        match constant {
                            Some(t) => {
                                let mut id = Vec::with_capacity(1);
                                self.keys[k].intern_array(&t.slice(0, 1), &mut id)?;
                                out.resize(chunk.len(), id[0]);
                            }
                            None => {
                                let values = seg.read_column(*seg_col, chunk).map_err(ext)?;
                                let arr = eval_single(expr, schema, values)?;
                                self.keys[k].intern_array(&arr, out)?;
                            }
                        }
                    }
                }
            }
            if part.is_some() {
                // Only the rows whose key this part owns.
                mine.clear();
                let codes = &mut codes[0];
                let mut kept = 0;
                for r in 0..codes.len() {
                    if codes[r] != FOREIGN {
                        codes[kept] = codes[r];
                        mine.push(chunk[r]);
                        kept += 1;
                    }
                }
                codes.truncate(kept);
                if kept == 0 {
                    continue;
                }
                chunk = mine.as_slice();
                batch = Some(read(chunk)?);
            }
            let batch = batch.ok_or_else(|| DataFusionError::Internal("no batch read".into()))?;
            if !direct {
                groups.clear();
            }
            // Rows index every key's codes at once.
            #[allow(clippy::needless_range_loop)]
            match dense.as_mut() {
                Some((strides, table)) => {
                    for row in 0..chunk.len() {
                        let combo: usize = (0..nkeys)
                            .map(|k| codes[k][row] as usize * strides[k])
                            .sum();
                        if table[combo] == u32::MAX {
                            for (k, src) in sources.iter_mut().enumerate() {
                                let Source::Dict { dict, key_ids, .. } = src else {
                                    unreachable!("dense only over dictionary keys");
                                };
                                let code = codes[k][row];
                                let id = (code as usize != dict.len()).then_some(code);
                                tuple[k] =
                                    Self::dict_key(&mut self.keys[k], dict, key_ids, id, None)?;
                            }
                            table[combo] = self.groups.group(&tuple);
                        }
                        groups.push(table[combo] as usize);
                    }
                }
                // One key: the key id is the group id (already in `groups` when direct).
                None if nkeys == 1 => {
                    if !direct {
                        groups.extend(codes[0].iter().map(|&c| c as usize));
                    }
                    self.groups.set_single_len(self.keys[0].len());
                }
                None => {
                    for row in 0..chunk.len() {
                        for k in 0..nkeys {
                            tuple[k] = codes[k][row];
                        }
                        groups.push(self.groups.group(&tuple) as usize);
                    }
                }
            }
            let batch = match &job.pre {
                None => batch,
                Some((exprs, schema)) => RecordBatch::try_new_with_options(
                    schema.clone(),
                    exprs
                        .iter()
                        .map(|e| e.evaluate(&batch)?.into_array(chunk.len()))
                        .collect::<DfResult<Vec<_>>>()?,
                    &RecordBatchOptions::new().with_row_count(Some(chunk.len())),
                )?,
            };
            let total = self.groups.len();
            for (acc, (args, sketch)) in
                self.accs.iter_mut().zip(job.args.iter().zip(&mut sketches))
            {
                if let Some(h) = sketch {
                    let hashes = h.row_hashes(seg, chunk)?;
                    acc.update_batch(&[hashes], &groups, None, total)?;
                    continue;
                }
                let values = args
                    .iter()
                    .map(|e| e.evaluate(&batch)?.into_array(chunk.len()))
                    .collect::<DfResult<Vec<_>>>()?;
                acc.update_batch(&values, &groups, None, total)?;
            }
            self.fed = true;
        }
        let size = self.size();
        self.reservation.try_resize(size)
    }

    /// Aggregates one segment through the cache of segments' parts, slice by slice
    /// ([`SLICE_BLOCKS`] blocks): merges the part kept for a slice, its predicate (as it reads
    /// on that slice's blocks) and the segment's valid docs, or computes it apart, keeps it
    /// and merges it. A time range moving over a segment cuts one slice; the others it
    /// covers whole read the same, unfiltered, at every refresh.
    fn segment_reusing(
        &mut self,
        job: &Job,
        pool: &Arc<dyn MemoryPool>,
        at: Reuse<'_>,
        seg: &SegmentReader,
        valid: Option<&Arc<RoaringBitmap>>,
        cancel: &Cancel<'_>,
    ) -> DfResult<()> {
        let scan = job.scan();
        let stats = scan.stats();
        let predicate = scan.predicate().and_then(|p| read_on(seg, p, None));
        if predicate == Some(Predicate::Const(false)) || valid.is_some_and(|v| v.is_empty()) {
            // Pruned, and counted so, as `segment` would.
            return self.segment(job, seg, valid, cancel);
        }
        // A key column whose dictionary alone holds too many values: never worth keeping.
        for k in &job.keys {
            if let KeyExpr::Column { seg_col } = k.expr {
                if seg
                    .dictionary(seg_col)
                    .map_err(ext)?
                    .is_some_and(|d| d.len() > PARTIAL_MAX_GROUPS)
                {
                    at.cache
                        .put(not_worth_keeping(at.fragment, scan), None, Partial::TooMany);
                    at.off.store(true, Ordering::Relaxed);
                    return self.segment(job, seg, valid, cancel);
                }
            }
        }
        // Every doc matches and the key's index can count them: nothing to keep per slice.
        if predicate.is_none()
            && valid.is_none()
            && self
                .index_countable(job, seg, seg.row_count() as u64)?
                .is_some()
        {
            return self.segment(job, seg, valid, cancel);
        }
        // The segment's matched docs, evaluated at the first slice not kept.
        let mut reading: Option<Option<Reading>> = None;
        // Of these, the docs of the slices aggregated here (the others' parts were kept).
        let mut scanned = 0u64;
        let mut all_kept = true;
        for (range, key) in slice_keys(seg, predicate.as_ref(), at.fragment) {
            let (kept, claim) = match at.cache.lookup(&key, valid) {
                Lookup::Kept(Partial::States { batch, widths }) => {
                    stats.partials_reused.fetch_add(1, Ordering::Relaxed);
                    self.merge_states(&batch, &widths)?;
                    continue;
                }
                Lookup::Kept(p) => (Some(p), None),
                Lookup::Compute(claim) => (None, claim),
            };
            all_kept = false;
            let reading = match &mut reading {
                Some(r) => r,
                None => reading.insert(
                    matching_docs(seg, valid, predicate.as_ref(), stats)?
                        .map(|matched| Reading::new(matched, None, scan.dynamic_generation())),
                ),
            };
            let Some(reading) = reading.as_mut() else {
                // Nothing matches in the whole segment.
                return Ok(());
            };
            let slice_rows = range_rows(seg, &range);
            let first = (range.start * seg.block_rows()) as u32;
            scanned += reading.matched.len_in(first..first + slice_rows as u32);
            if matches!(kept, Some(Partial::TooMany)) || at.off.load(Ordering::Relaxed) {
                self.blocks(job, seg, reading, range, cancel)?;
                continue;
            }
            let mut part = Worker::new(job, pool, &[at.index])?;
            part.blocks(job, seg, reading, range, cancel)?;
            let groups = part.groups.len();
            if groups > PARTIAL_MAX_GROUPS
                || groups.saturating_mul(PARTIAL_ROWS_PER_GROUP) > slice_rows
            {
                // Merging such parts back costs about what aggregating the rows does: this
                // aggregation is not kept, here or by later queries.
                at.cache
                    .put(not_worth_keeping(at.fragment, scan), None, Partial::TooMany);
                at.off.store(true, Ordering::Relaxed);
                self.merge(part)?;
                continue;
            }
            let (batch, widths) = part.states()?;
            self.merge_states(&batch, &widths)?;
            at.cache
                .put(key, valid.cloned(), Partial::States { batch, widths });
            // Kept: the queries waiting for this slice take it now.
            drop(claim);
        }
        if all_kept {
            // Not read at all: counted as queried, not as scanned.
            stats.segments_queried.fetch_add(1, Ordering::Relaxed);
            stats
                .total_docs
                .fetch_add(seg.row_count() as u64, Ordering::Relaxed);
        }
        if let Some(Some(r)) = &reading {
            // `matching_docs` counted every matched doc as scanned; only the slices
            // aggregated here were.
            stats
                .docs_scanned
                .fetch_sub(r.matched.len() - scanned, Ordering::Relaxed);
        }
        Ok(())
    }

    /// This worker's groups as one batch: each key's values (in its interning type), then
    /// each accumulator's state columns; and how many state columns each accumulator has.
    fn states(mut self) -> DfResult<(RecordBatch, Arc<[usize]>)> {
        let n = self.groups.len();
        let mut fields = Vec::new();
        let mut columns: Vec<ArrayRef> = Vec::new();
        for k in 0..self.keys.len() {
            let values = self.keys[k].values(&self.keys[k].kind().native_type())?;
            let col = take(values.as_ref(), &self.groups.key_column(k), None)?;
            fields.push(arrow::datatypes::Field::new(
                format!("k{k}"),
                col.data_type().clone(),
                true,
            ));
            columns.push(col);
        }
        let mut widths = Vec::with_capacity(self.accs.len());
        for (a, acc) in self.accs.iter_mut().enumerate() {
            let state = acc.state(EmitTo::All)?;
            widths.push(state.len());
            for (j, col) in state.into_iter().enumerate() {
                fields.push(arrow::datatypes::Field::new(
                    format!("a{a}_{j}"),
                    col.data_type().clone(),
                    true,
                ));
                columns.push(col);
            }
        }
        let batch = RecordBatch::try_new_with_options(
            Arc::new(arrow::datatypes::Schema::new(fields)),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(n)),
        )?;
        Ok((batch, widths.into()))
    }

    /// Folds in a batch [`Worker::states`] made, matching keys by value.
    fn merge_states(&mut self, batch: &RecordBatch, widths: &[usize]) -> DfResult<()> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok(());
        }
        let nkeys = self.keys.len();
        let mut ids: Vec<Vec<u32>> = vec![Vec::with_capacity(n); nkeys];
        for (k, out) in ids.iter_mut().enumerate() {
            self.keys[k].intern_array(batch.column(k), out)?;
        }
        let mut gi = Vec::with_capacity(n);
        let mut tuple = vec![0u32; nkeys];
        for row in 0..n {
            for (t, key_ids) in tuple.iter_mut().zip(&ids) {
                *t = key_ids[row];
            }
            gi.push(self.groups.group(&tuple) as usize);
        }
        let total = self.groups.len();
        let mut col = nkeys;
        for (acc, &w) in self.accs.iter_mut().zip(widths) {
            let state = batch.columns().get(col..col + w).ok_or_else(|| {
                DataFusionError::Internal("kept segment part has too few columns".into())
            })?;
            acc.merge_batch(state, &gi, None, total)?;
            col += w;
        }
        let size = self.size();
        self.reservation.try_resize(size)
    }

    /// Answers one segment from a star-tree of it that covers the aggregation, if it has one
    /// (false: it has none, and the rows must answer).
    fn star_tree(&mut self, job: &Job, seg: &SegmentReader, cancel: &Cancel<'_>) -> DfResult<bool> {
        let (Some(plan), scan) = (&job.star, job.scan()) else {
            return Ok(false);
        };
        let predicate = scan.predicate().and_then(|p| read_on(seg, p, None));
        if predicate == Some(Predicate::Const(false)) {
            // Pruned, and counted so, by the rows' path.
            return Ok(false);
        }
        let Some(read) = plan.on_segment(seg, predicate.as_ref())? else {
            return Ok(false);
        };
        if cancel.stopped() {
            return Err(DataFusionError::Execution("query cancelled".into()));
        }
        let recs = read.tree.select(&read.uses).map_err(ext)?;
        let stats = scan.stats();
        let r = Ordering::Relaxed;
        stats.segments_queried.fetch_add(1, r);
        stats.total_docs.fetch_add(seg.row_count() as u64, r);
        stats.star_tree_segments.fetch_add(1, r);
        stats.docs_scanned.fetch_add(recs.len() as u64, r);
        if recs.is_empty() {
            return Ok(true);
        }
        stats.segments_matched.fetch_add(1, r);
        // Each record's group: its keys' dictionary ids mapped to key ids as in `blocks`.
        let mut dicts = Vec::with_capacity(job.keys.len());
        for k in &job.keys {
            let KeyExpr::Column { seg_col } = k.expr else {
                return Err(DataFusionError::Internal(
                    "star-tree key is not a column".into(),
                ));
            };
            let dict = seg.dictionary(seg_col).map_err(ext)?.ok_or_else(|| {
                DataFusionError::Internal("star-tree dimension without a dictionary".into())
            })?;
            let ids = vec![u32::MAX; dict.len()];
            dicts.push((dict, ids));
        }
        let mut tuple = vec![0u32; job.keys.len()];
        let mut groups = Vec::with_capacity(recs.len());
        for &rec in &recs {
            for (k, (dict, key_ids)) in dicts.iter_mut().enumerate() {
                let id = read.tree.dimension(read.key_dims[k])[rec as usize];
                let id = (id != basalt_segment::star_tree::NULL_ID).then_some(id);
                tuple[k] = Self::dict_key(&mut self.keys[k], dict, key_ids, id, None)?;
            }
            groups.push(self.groups.group(&tuple) as usize);
        }
        let total = self.groups.len();
        for (a, acc) in self.accs.iter_mut().enumerate() {
            let (states, per_group) = plan.states(&read, a, &recs, &groups)?;
            let at = per_group.as_deref().unwrap_or(&groups);
            acc.merge_batch(&states, at, None, total)?;
        }
        self.fed = true;
        let size = self.size();
        self.reservation.try_resize(size)?;
        Ok(true)
    }

    /// `count(*)` (and nothing else) grouped by one dictionary column that has sorted runs or
    /// an inverted index: each group's count is how many matched docs its value's index entry
    /// holds ([`SegmentReader::value_counts`]), added through the counts' state; no row is
    /// read. Only for columns of few values against the docs matched, since each value's
    /// entry is decoded ([`INDEX_COUNT_VALUES`], [`INDEX_COUNT_DOCS_PER_VALUE`]). Returns
    /// whether it answered the segment.
    fn counts_from_index(
        &mut self,
        job: &Job,
        seg: &SegmentReader,
        matched: &Matched,
    ) -> DfResult<bool> {
        let Some((seg_col, dict)) = self.index_countable(job, seg, matched.len())? else {
            return Ok(false);
        };
        let docs = match matched {
            Matched::All(_) => None,
            Matched::Some(bm) => Some(bm),
        };
        let Some(counts) = seg.value_counts(seg_col, docs).map_err(ext)? else {
            return Ok(false);
        };
        let nulls = seg.nulls(seg_col).map_err(ext)?;
        let null_docs = match docs {
            None => nulls.len(),
            Some(d) => nulls.intersection_len(d),
        };
        let mut key_ids = vec![u32::MAX; dict.len()];
        let mut groups = Vec::with_capacity(counts.len() + 1);
        let mut states = Vec::with_capacity(counts.len() + 1);
        let values = counts
            .iter()
            .enumerate()
            .map(|(id, &n)| (Some(id as u32), n));
        for (id, n) in values.chain(std::iter::once((None, null_docs))) {
            if n > 0 {
                let key = Self::dict_key(&mut self.keys[0], &dict, &mut key_ids, id, None)?;
                groups.push(key as usize);
                states.push(n as i64);
            }
        }
        // An index answered the segment (what its stats say).
        job.scan()
            .stats()
            .index_lookups
            .fetch_add(1, Ordering::Relaxed);
        // One key: its key id is the group id.
        self.groups.set_single_len(self.keys[0].len());
        let total = self.groups.len();
        let state: ArrayRef = Arc::new(Int64Array::from(states));
        for acc in self.accs.iter_mut() {
            acc.merge_batch(std::slice::from_ref(&state), &groups, None, total)?;
        }
        self.fed = true;
        let size = self.size();
        self.reservation.try_resize(size)?;
        Ok(true)
    }

    /// The key column and its dictionary when [`Self::counts_from_index`] can answer this
    /// segment with `docs` docs matched: only `count(*)`, one dictionary key with sorted runs
    /// or an inverted index and few values for the docs, most of the segment matched, this
    /// worker holding every key (not a part of them), no join's filter. (A column without
    /// either must not take this path where parts are kept: its rows would be read again at
    /// every query instead of its slices' parts reused.)
    fn index_countable(
        &self,
        job: &Job,
        seg: &SegmentReader,
        docs: u64,
    ) -> DfResult<Option<(usize, Arc<Dictionary>)>> {
        let [GroupKey {
            expr: KeyExpr::Column { seg_col },
            ..
        }] = job.keys.as_slice()
        else {
            return Ok(None);
        };
        if !job.row_counts.iter().all(|&c| c)
            || self.part.is_some()
            || self.sorted_ids.is_some()
            || self.next_ids.is_some()
            || job.scan().has_dynamic_filters()
        {
            return Ok(None);
        }
        let meta = seg.column_meta(*seg_col);
        if meta.sorted_runs.is_none() && meta.inverted.is_none() {
            return Ok(None);
        }
        let Some(dict) = seg.dictionary(*seg_col).map_err(ext)? else {
            return Ok(None);
        };
        if dict.len() > INDEX_COUNT_VALUES
            || dict.len() as u64 * INDEX_COUNT_DOCS_PER_VALUE > docs
            || docs * 2 < seg.row_count() as u64
        {
            return Ok(None);
        }
        Ok(Some((*seg_col, dict)))
    }

    /// Adds `n` rows to every count(*) aggregate of a query without GROUP BY, through their
    /// state: no column is read and no row materialised.
    fn add_row_count(&mut self, n: u64) -> DfResult<()> {
        let state: ArrayRef = Arc::new(Int64Array::from(vec![n as i64]));
        for acc in self.accs.iter_mut() {
            acc.merge_batch(std::slice::from_ref(&state), &[0], None, 1)?;
        }
        self.fed = true;
        Ok(())
    }

    /// Folds `other`'s groups into this worker's, matching keys by value.
    fn merge(&mut self, mut other: Worker) -> DfResult<()> {
        let n = other.groups.len();
        if n == 0 || (other.keys.is_empty() && !other.fed) {
            return Ok(());
        }
        self.fed = true;
        let maps: Vec<Vec<u32>> = self
            .keys
            .iter_mut()
            .zip(&other.keys)
            .map(|(mine, theirs)| {
                (0..theirs.len() as u32)
                    .map(|id| mine.intern_from(theirs, id))
                    .collect()
            })
            .collect();
        let mut gi = Vec::with_capacity(n);
        let mut t = Vec::new();
        let mut mapped = vec![0u32; maps.len()];
        for g in 0..n {
            other.groups.tuple(g, &mut t);
            for (k, m) in mapped.iter_mut().enumerate() {
                *m = maps[k][t[k] as usize];
            }
            gi.push(self.groups.group(&mapped) as usize);
        }
        let total = self.groups.len();
        for (mine, theirs) in self.accs.iter_mut().zip(other.accs.iter_mut()) {
            let state = theirs.state(EmitTo::All)?;
            mine.merge_batch(&state, &gi, None, total)?;
        }
        drop(other);
        let size = self.size();
        self.reservation.try_resize(size)
    }

    /// Final rows: key values and evaluated aggregates, in batches of the scan's batch size.
    fn finish(mut self, job: &Job) -> DfResult<Vec<RecordBatch>> {
        let n = self.groups.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(job.schema.fields().len());
        for (k, key) in job.keys.iter().enumerate() {
            let ids = self.groups.key_column(k);
            let col: ArrayRef = match &key.out_type {
                // Strings as a dictionary over the distinct values: no re-hashing.
                DataType::Dictionary(kt, vt)
                    if kt.as_ref() == &DataType::Int32 && vt.as_ref() == &DataType::Utf8 =>
                {
                    let values = self.keys[k].values(&DataType::Utf8)?;
                    let keys = Int32Array::from_iter_values(ids.values().iter().map(|&i| i as i32));
                    let keys = match values.nulls() {
                        Some(nb) => Int32Array::new(
                            keys.values().clone(),
                            Some(
                                ids.values()
                                    .iter()
                                    .map(|&i| nb.is_valid(i as usize))
                                    .collect(),
                            ),
                        ),
                        None => keys,
                    };
                    Arc::new(DictionaryArray::<Int32Type>::try_new(keys, values)?)
                }
                dt => {
                    let values = self.keys[k].values(dt)?;
                    take(values.as_ref(), &ids, None)?
                }
            };
            columns.push(col);
        }
        let unfed = job.keys.is_empty() && !self.fed;
        for (acc, agg) in self.accs.iter_mut().zip(&job.aggs) {
            let values = match (unfed, job.partial) {
                // No row reached the one group: DataFusion's answer over no rows.
                (true, partial) => {
                    let mut fresh = agg.create_accumulator()?;
                    match partial {
                        true => fresh
                            .state()?
                            .iter()
                            .map(|s| s.to_array())
                            .collect::<DfResult<Vec<_>>>()?,
                        false => vec![fresh.evaluate()?.to_array()?],
                    }
                }
                (false, true) => acc.state(EmitTo::All)?,
                (false, false) => vec![acc.evaluate(EmitTo::All)?],
            };
            for v in values {
                let want = job.schema.field(columns.len()).data_type();
                columns.push(if v.data_type() == want {
                    v
                } else {
                    cast(&v, want)?
                });
            }
        }
        let batch = RecordBatch::try_new(job.schema.clone(), columns)?;
        let size = job.scan().batch_size().max(1);
        if n <= size {
            return Ok(vec![batch]);
        }
        // Each batch gets a dictionary of only the values it holds. Slices sharing one
        // dictionary of every group's value would be copied whole into every batch an
        // operator above interleaves from them (a sort's merge): gigabytes for a few MB of
        // groups.
        (0..n)
            .step_by(size)
            .map(|off| {
                let slice = batch.slice(off, size.min(n - off));
                let cols = slice
                    .columns()
                    .iter()
                    .map(compact_dictionary)
                    .collect::<DfResult<Vec<_>>>()?;
                Ok(RecordBatch::try_new(job.schema.clone(), cols)?)
            })
            .collect()
    }
}

/// A dictionary column with only the values its keys use (other columns as they are).
fn compact_dictionary(col: &ArrayRef) -> DfResult<ArrayRef> {
    let Some(dict) = col.as_any().downcast_ref::<DictionaryArray<Int32Type>>() else {
        return Ok(col.clone());
    };
    let keys = dict.keys();
    let mut used: Vec<i32> = keys.iter().flatten().collect();
    used.sort_unstable();
    used.dedup();
    let values = take(
        dict.values().as_ref(),
        &arrow::array::UInt32Array::from_iter_values(used.iter().map(|&k| k as u32)),
        None,
    )?;
    let remapped: Int32Array = keys
        .iter()
        .map(|k| k.map(|k| used.binary_search(&k).unwrap_or(0) as i32))
        .collect();
    Ok(Arc::new(DictionaryArray::<Int32Type>::try_new(
        remapped, values,
    )?))
}
