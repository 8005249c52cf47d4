//! Running a direct query. In: a [`DirectQuery`], the query's scan counters, how many
//! threads may work on it and, when the query may reuse them, the engine's cache of
//! segments' aggregation parts. Out: the one-row answer.
//!
//! Segments the footers rule out are counted as pruned on the calling task. The rest are
//! split over up to `partitions` tasks on the query threads, as DataFusion's scan spreads
//! segments over partitions; each finds a segment's matching docs the way the scan does
//! ([`crate::scan::matching_docs`]: indexes, zone maps, upsert valid docs, counters), counts
//! them, and feeds the columns the aggregates read, in slices of [`SLICE`] docs, to
//! DataFusion's accumulators. With the cache, a segment goes slice by slice through it
//! instead ([`super::slices`]). Partial states merge as DataFusion's final aggregate merges
//! them. A task yields between segments, so a deadline or a client gone stops it there.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::compute::cast;
use basalt_segment::predicate::{candidate_docs, scanned_docs};
use basalt_segment::{may_match, SegmentReader};
use datafusion::common::ScalarValue;
use datafusion::logical_expr::Accumulator;

use super::DirectQuery;
use crate::error::{ErrorKind, QueryError, Result};
use crate::scan::{matching_docs, Matched, ScanStats};
use crate::segment_agg::PartialAggregates;

/// Queries the footers say decode at most this many docs are answered on the task that
/// received them: handing them to the query threads and back (two thread wake-ups) would
/// cost more than the work.
/// (Tests lower it to send every query to the query threads.)
pub(crate) static INLINE_DOCS: AtomicU64 = AtomicU64::new(65_536);

/// Docs whose columns are read at once (a bound on the memory one task holds).
pub(super) const SLICE: usize = 65_536;

/// What one task computed over its segments.
pub(super) struct Running {
    pub(super) docs: u64,
    /// One per aggregate that reads a column (in the query's order).
    pub(super) accumulators: Vec<Box<dyn Accumulator>>,
}

impl DirectQuery {
    /// The segments the footers do not rule out; the others are counted as pruned, as the
    /// scan counts them.
    pub(crate) fn prune(&self, stats: &ScanStats) -> Result<Vec<usize>> {
        let mut work = Vec::with_capacity(self.snapshot.segments.len());
        for (i, seg) in self.snapshot.segments.iter().enumerate() {
            if let Some(p) = &self.predicate {
                if !may_match(seg, p).map_err(segment_error)? {
                    matching_docs(seg, self.snapshot.valid_of(i), Some(p), stats)?;
                    continue;
                }
            }
            work.push(i);
        }
        Ok(work)
    }

    /// At most how many docs answering over segments `work` decodes, judged from the
    /// footers: those the predicate tests row by row ([`scanned_docs`]) plus, when an
    /// aggregate reads a column, those it may select ([`candidate_docs`]).
    pub(crate) fn cost(&self, work: &[usize]) -> u64 {
        let reads = self.aggregates.iter().any(|a| a.input.is_some());
        work.iter()
            .map(|&i| {
                let seg = &self.snapshot.segments[i];
                let p = self.predicate.as_ref();
                let tested = p.map_or(0, |p| scanned_docs(seg, p));
                let read = match (reads, p) {
                    (false, _) => 0,
                    (true, Some(p)) => candidate_docs(seg, p),
                    (true, None) => seg.row_count() as u64,
                };
                tested + read
            })
            .sum()
    }

    /// The answer over segments `work` (what [`Self::prune`] left): one row.
    pub(crate) async fn run(
        self,
        work: Vec<usize>,
        stats: &Arc<ScanStats>,
        partitions: usize,
        reuse: Option<Arc<PartialAggregates>>,
    ) -> Result<RecordBatch> {
        let query = Arc::new(self);
        let tasks = partitions.clamp(1, work.len().max(1));
        let partials = if tasks == 1 {
            vec![query.partial(&work, stats, reuse.as_deref()).await?]
        } else {
            let handles: Vec<_> = (0..tasks)
                .map(|t| {
                    let mine: Vec<usize> = work.iter().copied().skip(t).step_by(tasks).collect();
                    let (query, stats, reuse) = (query.clone(), stats.clone(), reuse.clone());
                    crate::runtime::spawn(async move {
                        query.partial(&mine, &stats, reuse.as_deref()).await
                    })
                })
                .collect();
            let mut partials = Vec::with_capacity(tasks);
            for h in handles {
                partials.push(h.await.map_err(|e| {
                    QueryError::invalid(
                        ErrorKind::Internal,
                        format!("a part of the query's execution failed: {e}"),
                    )
                })??);
            }
            partials
        };
        query.finish(partials)
    }

    /// Fresh accumulators, one per aggregate that reads a column.
    pub(super) fn accumulators(&self) -> Result<Vec<Box<dyn Accumulator>>> {
        Ok(self
            .aggregates
            .iter()
            .filter_map(|a| a.input.as_ref())
            .map(|i| i.expr.create_accumulator())
            .collect::<datafusion::error::Result<Vec<_>>>()?)
    }

    /// Counts and accumulates the matching docs of segments `segments`.
    async fn partial(
        &self,
        segments: &[usize],
        stats: &ScanStats,
        reuse: Option<&PartialAggregates>,
    ) -> Result<Running> {
        let mut running = Running {
            docs: 0,
            accumulators: self.accumulators()?,
        };
        for &i in segments {
            let seg = &self.snapshot.segments[i];
            match reuse {
                Some(cache) if cache.keeps(seg.row_count()) => {
                    self.segment_reusing(i, cache, stats, &mut running)?
                }
                _ => self.segment(i, stats, &mut running)?,
            }
            tokio::task::yield_now().await;
        }
        Ok(running)
    }

    /// Counts and accumulates the matching docs of segment `i`.
    pub(super) fn segment(&self, i: usize, stats: &ScanStats, running: &mut Running) -> Result<()> {
        let seg = &self.snapshot.segments[i];
        let Some(matched) = matching_docs(
            seg,
            self.snapshot.valid_of(i),
            self.predicate.as_ref(),
            stats,
        )?
        else {
            return Ok(());
        };
        running.docs += matched.len();
        if running.accumulators.is_empty() || matched.len() == 0 {
            return Ok(());
        }
        match &matched {
            Matched::All(n) => {
                let n = *n;
                for start in (0..n).step_by(SLICE) {
                    let end = n.min(start.saturating_add(SLICE as u32));
                    let slice: Vec<u32> = (start..end).collect();
                    self.accumulate(seg, &slice, &mut running.accumulators)?;
                }
            }
            Matched::Some(_) => {
                for slice in matched.docs().chunks(SLICE) {
                    self.accumulate(seg, slice, &mut running.accumulators)?;
                }
            }
        }
        Ok(())
    }

    /// Feeds the columns of `docs` to the accumulators; a column two aggregates read is
    /// read once.
    pub(super) fn accumulate(
        &self,
        seg: &SegmentReader,
        docs: &[u32],
        accumulators: &mut [Box<dyn Accumulator>],
    ) -> Result<()> {
        let mut read: Vec<(usize, ArrayRef)> = Vec::new();
        let inputs = self.aggregates.iter().filter_map(|a| a.input.as_ref());
        for (input, acc) in inputs.zip(accumulators.iter_mut()) {
            let column = match read.iter().find(|(c, _)| *c == input.column) {
                Some((_, a)) => a.clone(),
                None => {
                    let a = seg.read_column(input.column, docs).map_err(segment_error)?;
                    read.push((input.column, a.clone()));
                    a
                }
            };
            let column = match column.data_type() == &input.ty {
                true => column,
                false => cast(&column, &input.ty).map_err(arrow_error)?,
            };
            acc.update_batch(&[column])?;
        }
        Ok(())
    }

    /// The answer from every task's part: counts added, accumulator states merged.
    fn finish(&self, partials: Vec<Running>) -> Result<RecordBatch> {
        let docs: u64 = partials.iter().map(|p| p.docs).sum();
        let mut parts: Vec<std::vec::IntoIter<Box<dyn Accumulator>>> = partials
            .into_iter()
            .map(|p| p.accumulators.into_iter())
            .collect();
        let mut columns = Vec::with_capacity(self.aggregates.len());
        for a in &self.aggregates {
            let value = match &a.input {
                None => ScalarValue::Int64(Some(docs as i64)),
                Some(input) => {
                    let mut mine: Vec<Box<dyn Accumulator>> =
                        parts.iter_mut().filter_map(|p| p.next()).collect();
                    match mine.len() {
                        1 => mine[0].evaluate()?,
                        _ => {
                            let mut last = input.expr.create_accumulator()?;
                            for acc in &mut mine {
                                let states = acc
                                    .state()?
                                    .iter()
                                    .map(|s| s.to_array())
                                    .collect::<datafusion::error::Result<Vec<_>>>()?;
                                last.merge_batch(&states)?;
                            }
                            last.evaluate()?
                        }
                    }
                }
            };
            columns.push(value.to_array()?);
        }
        RecordBatch::try_new(self.schema.clone(), columns).map_err(arrow_error)
    }
}

pub(super) fn arrow_error(e: arrow::error::ArrowError) -> QueryError {
    QueryError::from(datafusion::error::DataFusionError::from(e))
}

pub(super) fn segment_error(e: basalt_segment::SegmentError) -> QueryError {
    QueryError::from(datafusion::error::DataFusionError::External(Box::new(e)))
}
