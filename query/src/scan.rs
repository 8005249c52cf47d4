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

use arrow::datatypes::{Schema, SchemaRef};
use arrow::record_batch::{RecordBatch, RecordBatchOptions};
use basalt_segment::predicate::{evaluate_with_stats, EvalStats};
use basalt_segment::{may_match, Predicate, RoaringBitmap, SegmentReader};
use datafusion::common::stats::Precision;
use datafusion::common::Statistics;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};

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
}

pub struct SegmentScanExec {
    snapshot: Arc<TableSnapshot>,
    projection: Vec<usize>,
    predicate: Option<Predicate>,
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

impl SegmentScanExec {
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

    /// The doc ids, ascending.
    pub(crate) fn docs(&self) -> Vec<u32> {
        match self {
            Matched::All(n) => (0..*n).collect(),
            Matched::Some(bm) => bm.iter().collect(),
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
        )
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
            rows = rows.div_ceil(5);
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
        Ok(Statistics {
            num_rows: Precision::Inexact(rows),
            total_byte_size: Precision::Inexact(rows.saturating_mul(row_bytes)),
            column_statistics: Statistics::unknown_column(&self.schema),
        })
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
        };
        let projection = self.projection.clone();
        let predicate = self.predicate.clone();
        let stats = self.stats.clone();
        let batch_size = self.batch_size;
        let schema = self.schema.clone();
        let stream = futures::stream::try_unfold(state, move |mut st| {
            let projection = projection.clone();
            let predicate = predicate.clone();
            let stats = stats.clone();
            let schema = schema.clone();
            async move {
                loop {
                    if st.remaining == Some(0) {
                        return Ok(None);
                    }
                    if let Some(seg) = st.current.clone() {
                        if st.emitted < st.docs.len() {
                            let mut n = (st.docs.len() - st.emitted).min(batch_size);
                            if let Some(r) = st.remaining.as_mut() {
                                n = n.min(*r);
                                *r -= n;
                            }
                            let docs = &st.docs[st.emitted..st.emitted + n];
                            st.emitted += n;
                            let batch = if projection.is_empty() {
                                RecordBatch::try_new_with_options(
                                    schema.clone(),
                                    vec![],
                                    &RecordBatchOptions::new().with_row_count(Some(n)),
                                )?
                            } else {
                                let b = seg
                                    .read_batch(&projection, docs)
                                    .map_err(|e| DataFusionError::External(Box::new(e)))?;
                                // The reader's field list equals our schema; rebuild to share it.
                                RecordBatch::try_new(schema.clone(), b.columns().to_vec())?
                            };
                            return Ok(Some((batch, st)));
                        }
                        st.current = None;
                    }
                    let Some((seg, valid)) = st.segments.get(st.next_segment).cloned() else {
                        return Ok(None);
                    };
                    st.next_segment += 1;
                    let Some(matched) =
                        matching_docs(&seg, valid.as_ref(), predicate.as_ref(), &stats)?
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
