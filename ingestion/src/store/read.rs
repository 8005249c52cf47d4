//! What a query reads from a table's view. In: a [`TableView`] (fixed for the query). Out:
//! segment readers — sealed segments plus the real-time partitions' mutable parts, frozen
//! into in-memory chunks — each with its valid docs on an upsert table.
//!
//! [`TableView::readers`] is the whole view (`standalone`). [`TableView::stream_readers`] is
//! one stream partition's rows past a checkpoint, which a cluster server answers for a
//! broker: the sealed segments this server holds whose offsets chain from that checkpoint,
//! then the mutable parts. A broker reads its sealed segments and checkpoints from one
//! metastore state, so each row is counted once whichever side of a seal it was on.
//! [`TableView::partition_readers`] is all of a partition on its consumer (upsert tables,
//! whose valid docs only the consumer's key map keeps current).

use std::sync::Arc;

use basalt_segment::{RoaringBitmap, SegmentReader};

use super::{LoadedSegment, TableView};
use crate::error::Result;
use crate::mutable::MutablePart;

/// Segment readers and, on an upsert table, one valid-docs bitmap per reader.
#[derive(Debug, Default)]
pub struct Readers {
    pub segments: Vec<Arc<SegmentReader>>,
    /// Empty unless the table is an upsert table.
    pub valid: Vec<Arc<RoaringBitmap>>,
}

impl TableView {
    /// Every segment and mutable part of the view; `quarantine` reads the quarantined
    /// messages instead of the rows.
    pub fn readers(&self, quarantine: bool) -> Result<Readers> {
        let sealed = match quarantine {
            true => &self.quarantine,
            false => &self.segments,
        };
        let mut out = Readers::default();
        let valid = self.valid.as_deref().filter(|_| !quarantine);
        self.add_sealed(&mut out, valid, sealed.iter());
        for part in &self.mutable {
            self.add_mutable(&mut out, valid, part, quarantine)?;
        }
        Ok(out)
    }

    /// The rows of stream partition `partition` from checkpoint `after` on, as this server
    /// holds them: sealed segments chaining from `after` (by their offsets), then the
    /// mutable parts. `None` when this server cannot answer exactly — it does not consume
    /// the partition, or a sealed range between `after` and its mutable rows is not here.
    pub fn stream_readers(&self, partition: i32, after: Option<i64>) -> Option<Result<Readers>> {
        let of_partition =
            |s: &&Arc<LoadedSegment>| s.meta.stream.is_some_and(|d| d.partition == partition);
        let rows: Vec<&Arc<LoadedSegment>> = self.segments.iter().filter(of_partition).collect();
        let quarantined: Vec<&Arc<LoadedSegment>> =
            self.quarantine.iter().filter(of_partition).collect();
        let parts = self.parts_of(partition);
        // Follow the seals from `after`; a seal's quarantine segment alone also advances.
        let mut chain = Vec::new();
        let mut at = after;
        while parts.first().is_none_or(|p| p.from != at) {
            let next = rows
                .iter()
                .chain(&quarantined)
                .filter_map(|s| s.meta.stream)
                .find(|d| d.from == at)?;
            if next.from.is_some_and(|f| next.to <= f) {
                return None; // not a forward range: never written by a seal
            }
            chain.extend(rows.iter().filter(|s| s.meta.stream == Some(next)).copied());
            at = Some(next.to);
        }
        Some(self.partition_rows(chain, parts))
    }

    /// Every row of stream partition `partition` as this server holds it — every published
    /// segment of the partition, then the mutable parts from the checkpoint of the same
    /// state — with this server's valid docs (an upsert table's consumer keeps them current
    /// for all of them). `None` when this server does not consume the partition or lacks one
    /// of its published segments.
    pub fn partition_readers(&self, partition: i32) -> Option<Result<Readers>> {
        let parts = self.parts_of(partition);
        if parts.first()?.from != self.checkpoints.get(&partition).copied() {
            return None;
        }
        let mut sealed = Vec::new();
        for meta in self.published.iter() {
            if meta.stream.is_some_and(|d| d.partition == partition) {
                sealed.push(self.segments.iter().find(|s| s.meta.id == meta.id)?);
            }
        }
        Some(self.partition_rows(sealed, parts))
    }

    /// The mutable parts of `partition`, oldest first.
    fn parts_of(&self, partition: i32) -> Vec<&Arc<MutablePart>> {
        let mut parts: Vec<&Arc<MutablePart>> = self
            .mutable
            .iter()
            .filter(|p| p.partition == partition)
            .collect();
        parts.sort_by_key(|p| p.from);
        parts
    }

    /// Readers of one partition's sealed segments and then its mutable parts' rows.
    fn partition_rows(
        &self,
        sealed: Vec<&Arc<LoadedSegment>>,
        parts: Vec<&Arc<MutablePart>>,
    ) -> Result<Readers> {
        let mut out = Readers::default();
        let valid = self.valid.as_deref();
        self.add_sealed(&mut out, valid, sealed.into_iter());
        for part in parts {
            self.add_mutable(&mut out, valid, part, false)?;
        }
        Ok(out)
    }

    fn add_sealed<'a>(
        &self,
        out: &mut Readers,
        valid: Option<&super::ValidDocs>,
        sealed: impl Iterator<Item = &'a Arc<LoadedSegment>>,
    ) {
        let none = Arc::new(RoaringBitmap::new());
        for s in sealed {
            out.segments.push(s.reader.clone());
            if let Some(v) = valid {
                out.valid.push(v.get(&s.meta.id).unwrap_or(&none).clone());
            }
        }
    }

    /// A mutable part's chunks. The view's valid docs were installed after the rows they
    /// cover were appended, so rows appended since are beyond them (not valid yet).
    fn add_mutable(
        &self,
        out: &mut Readers,
        valid: Option<&super::ValidDocs>,
        part: &MutablePart,
        quarantine: bool,
    ) -> Result<()> {
        let m = match quarantine {
            true => &part.quarantine,
            false => &part.rows,
        };
        let none = Arc::new(RoaringBitmap::new());
        for (reader, start) in m.snapshot_chunks()? {
            if let Some(v) = valid {
                let all = v.get(&part.segment_id).unwrap_or(&none);
                out.valid
                    .push(Arc::new(slice(all, start, reader.row_count())));
            }
            out.segments.push(reader);
        }
        Ok(())
    }
}

/// The docs of `bm` in `start..start + len`, renumbered from 0 (a mutable chunk's share of
/// its part's valid docs). Runs on every query of an upsert table: the first chunk (the
/// largest, chunks merge like a binary counter) is a container-level copy; later ones are
/// renumbered through a bitset, which roaring then takes a container at a time.
fn slice(bm: &Arc<RoaringBitmap>, start: u32, len: u32) -> RoaringBitmap {
    let end = start.saturating_add(len);
    if start == 0 {
        let mut r = RoaringBitmap::clone(bm);
        r.remove_range(end..);
        return r;
    }
    let mut bits = vec![0u8; (len as usize).div_ceil(8)];
    for d in bm.range(start..end) {
        let i = (d - start) as usize;
        bits[i >> 3] |= 1 << (i & 7);
    }
    RoaringBitmap::from_lsb0_bytes(0, &bits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn slice_renumbers_the_docs_in_range(
            docs in prop::collection::btree_set(0u32..300_000, 0..2000),
            start in 0u32..200_000,
            len in 0u32..150_000,
        ) {
            let bm = Arc::new(RoaringBitmap::from_iter(docs.iter().copied()));
            let want: Vec<u32> = docs
                .iter()
                .filter(|&&d| d >= start && d < start + len)
                .map(|d| d - start)
                .collect();
            prop_assert_eq!(slice(&bm, start, len).iter().collect::<Vec<_>>(), want.clone());
            prop_assert_eq!(slice(&bm, 0, len).iter().collect::<Vec<_>>(),
                docs.iter().copied().filter(|&d| d < len).collect::<Vec<_>>());
        }
    }
}
