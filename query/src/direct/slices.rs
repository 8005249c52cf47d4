//! A direct query's segments through the cache of aggregation parts. In: one segment, the
//! engine's [`PartialAggregates`] and the query's fingerprint. Out: the segment's count and
//! accumulator states merged into the task's, slice by slice (`segment_agg::SLICE_BLOCKS` blocks): a
//! slice's part is taken from the cache when an earlier query with the same aggregates
//! kept it under the same predicate (as it reads on that slice's blocks) and the same valid
//! docs, and computed and kept otherwise.
//!
//! The same keys, slices and rules as `SegmentAggregateExec`'s reuse
//! (`segment_agg::exec::segment_reusing`), so a KPI tile over a real-time table whose time
//! range moves with the clock recomputes only the slice its range cuts and the rows frozen
//! since its last refresh, whichever plan answers it. The part of a slice is one row: the
//! count, then each accumulator's state columns. Unlike the GROUP BY path, a slice another
//! query is computing is not waited for (these tasks run on the query threads' async
//! workers, which must not block): both compute it.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Int64Array, RecordBatch};
use basalt_segment::Predicate;
use std::sync::atomic::Ordering;

use super::run::{arrow_error, Running};
use super::DirectQuery;
use crate::error::{ErrorKind, QueryError, Result};
use crate::scan::{matching_docs, Matched, ScanStats};
use crate::segment_agg::{range_rows, read_on, slice_keys, Partial, PartialAggregates};

impl DirectQuery {
    /// Counts and accumulates segment `i`'s matching docs into `running`, slice by slice
    /// through `cache`.
    pub(super) fn segment_reusing(
        &self,
        i: usize,
        cache: &PartialAggregates,
        stats: &ScanStats,
        running: &mut Running,
    ) -> Result<()> {
        let seg = &self.snapshot.segments[i];
        let valid = self.snapshot.valid_of(i);
        let predicate = self.predicate.as_ref().and_then(|p| read_on(seg, p, None));
        if predicate == Some(Predicate::Const(false)) || valid.is_some_and(|v| v.is_empty()) {
            // Pruned, and counted so.
            return self.segment(i, stats, running);
        }
        // The segment's matched docs, evaluated at the first slice not kept, and their list.
        let mut matched: Option<Option<(Matched, Vec<u32>)>> = None;
        // Of these, the docs of the slices computed here (the others' parts were kept).
        let mut scanned = 0u64;
        let mut all_kept = true;
        for (range, key) in slice_keys(seg, predicate.as_ref(), &self.fragment) {
            if let Some(Partial::States { batch, widths }) = cache.get(&key, valid) {
                stats.partials_reused.fetch_add(1, Ordering::Relaxed);
                merge(&batch, &widths, running)?;
                continue;
            }
            all_kept = false;
            let read = match &mut matched {
                Some(m) => m,
                None => matched.insert(matching_docs(seg, valid, predicate.as_ref(), stats)?.map(
                    |m| {
                        let docs = match running.accumulators.is_empty() {
                            true => Vec::new(),
                            false => m.docs(),
                        };
                        (m, docs)
                    },
                )),
            };
            let Some((m, docs)) = read.as_ref() else {
                // Nothing matches in the whole segment.
                return Ok(());
            };
            let first = (range.start * seg.block_rows()) as u32;
            let end = first + range_rows(seg, &range) as u32;
            let count = m.len_in(first..end);
            scanned += count;
            let mut part = Running {
                docs: count,
                accumulators: self.accumulators()?,
            };
            if count > 0 && !part.accumulators.is_empty() {
                let (lo, hi) = (
                    docs.partition_point(|&d| d < first),
                    docs.partition_point(|&d| d < end),
                );
                for slice in docs[lo..hi].chunks(super::run::SLICE) {
                    self.accumulate(seg, slice, &mut part.accumulators)?;
                }
            }
            let (batch, widths) = states(&mut part)?;
            merge(&batch, &widths, running)?;
            cache.put(key, valid.cloned(), Partial::States { batch, widths });
        }
        if all_kept {
            // Not read at all: counted as queried, not as scanned.
            stats.segments_queried.fetch_add(1, Ordering::Relaxed);
            stats
                .total_docs
                .fetch_add(seg.row_count() as u64, Ordering::Relaxed);
        }
        if let Some(Some((m, _))) = &matched {
            // `matching_docs` counted every matched doc as scanned; only the slices computed
            // here were.
            stats
                .docs_scanned
                .fetch_sub(m.len() - scanned, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// A slice's part as one row: its count, then each accumulator's state columns; and how
/// many columns each of those has.
fn states(part: &mut Running) -> Result<(RecordBatch, Arc<[usize]>)> {
    let mut columns: Vec<(String, ArrayRef)> = vec![(
        "docs".into(),
        Arc::new(Int64Array::from(vec![part.docs as i64])),
    )];
    let mut widths = vec![1];
    for (k, acc) in part.accumulators.iter_mut().enumerate() {
        let state = acc.state()?;
        widths.push(state.len());
        for (j, s) in state.iter().enumerate() {
            columns.push((format!("a{k}_{j}"), s.to_array()?));
        }
    }
    let batch = RecordBatch::try_from_iter(columns).map_err(arrow_error)?;
    Ok((batch, widths.into()))
}

/// Adds a part's count to `running` and merges its states into `running`'s accumulators.
fn merge(batch: &RecordBatch, widths: &[usize], running: &mut Running) -> Result<()> {
    let malformed = || {
        QueryError::invalid(
            ErrorKind::Internal,
            "a kept aggregation part does not have this query's columns".to_string(),
        )
    };
    if widths.len() != running.accumulators.len() + 1 || batch.num_rows() != 1 {
        return Err(malformed());
    }
    let docs = batch
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .filter(|a| a.is_valid(0))
        .ok_or_else(malformed)?;
    running.docs += docs.value(0) as u64;
    let mut at = 1;
    for (acc, &w) in running.accumulators.iter_mut().zip(&widths[1..]) {
        let columns = batch.columns().get(at..at + w).ok_or_else(malformed)?;
        acc.merge_batch(columns)?;
        at += w;
    }
    Ok(())
}
