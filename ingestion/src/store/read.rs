//! What a query reads from a table's view. In: a [`TableView`] (fixed for the query). Out:
//! segment readers — sealed segments plus the real-time partitions' mutable parts, frozen
//! into in-memory chunks — each with its valid docs on an upsert table, or, for a stream
//! range starting inside a mutable part, a bitmap hiding the rows before it.
//!
//! [`TableView::readers`] is the whole view (`standalone`). [`TableView::stream_readers`] is
//! one stream partition's rows past a checkpoint, which a cluster server answers for a
//! broker: the sealed segments this server holds whose offsets chain from that checkpoint,
//! then the mutable parts (a consuming replica's from the first message at the checkpoint,
//! found through the parts' [`crate::mutable::Offsets`]), with the position it read up to. A broker reads its sealed segments and checkpoints from one
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
    /// Empty unless the table is an upsert table, or a stream range starts inside a mutable
    /// part (its earlier rows hidden).
    pub valid: Vec<Arc<RoaringBitmap>>,
    /// A stream range's position: the offset after the last message any of its mutable
    /// parts had recorded once they were read, so no later message's row is in the readers.
    pub position: Option<i64>,
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
    /// holds them: sealed segments chaining from `after` (by their offsets) up to the
    /// mutable part holding the messages from there, then that part (from its first message
    /// at or after the checkpoint) and the later parts. `None` when this server cannot answer
    /// exactly — it does not consume the partition, or a sealed range between `after` and
    /// its mutable rows is not here.
    ///
    /// `split`: a part may be read from a message inside it (a consuming replica cuts its
    /// parts elsewhere than the owner seals). Only where every message is one row or one
    /// quarantine entry — not on an upsert or dedup table, whose key map drops rows.
    pub fn stream_readers(
        &self,
        partition: i32,
        after: Option<i64>,
        split: bool,
    ) -> Option<Result<Readers>> {
        let of_partition =
            |s: &&Arc<LoadedSegment>| s.meta.stream.is_some_and(|d| d.partition == partition);
        let rows: Vec<&Arc<LoadedSegment>> = self.segments.iter().filter(of_partition).collect();
        let quarantined: Vec<&Arc<LoadedSegment>> =
            self.quarantine.iter().filter(of_partition).collect();
        let parts = self.parts_of(partition);
        // The part holding the messages from `at` on: the latest starting at or before it.
        let holding = |at: Option<i64>| match split {
            true => parts.iter().rposition(|p| p.from <= at),
            false => parts.iter().position(|p| p.from == at),
        };
        // Follow the seals from `after`; a seal's quarantine segment alone also advances.
        let mut chain = Vec::new();
        let mut at = after;
        let first = loop {
            if let Some(i) = holding(at) {
                break i;
            }
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
        };
        let cut = match (at, parts[first].from) {
            (Some(a), from) if from != at => parts[first].split(a).0,
            _ => 0,
        };
        let read = self.partition_rows(chain, parts[first..].to_vec(), cut);
        Some(read.map(|mut r| {
            // After the snapshots: no row of a later message is in them.
            r.position = parts.iter().filter_map(|p| p.recorded_end()).max();
            r
        }))
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
        Some(self.partition_rows(sealed, parts, 0))
    }

    /// The offset before which every message of stream partition `partition` has its row
    /// in this server's mutable parts (`None`: it has no part of the partition, or no
    /// message yet).
    pub fn stream_visible(&self, partition: i32) -> Option<i64> {
        self.parts_of(partition)
            .iter()
            .filter_map(|p| p.visible_end().or(p.from))
            .max()
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

    /// Readers of one partition's sealed segments and then its mutable parts' rows, the
    /// first part's from row `cut` on (its earlier rows hidden by a valid-docs bitmap, and
    /// every other reader given one of all its docs to match).
    fn partition_rows(
        &self,
        sealed: Vec<&Arc<LoadedSegment>>,
        parts: Vec<&Arc<MutablePart>>,
        cut: u32,
    ) -> Result<Readers> {
        let mut out = Readers::default();
        let valid = self.valid.as_deref();
        self.add_sealed(&mut out, valid, sealed.into_iter());
        for (i, part) in parts.into_iter().enumerate() {
            let from = out.segments.len();
            self.add_mutable(&mut out, valid, part, false)?;
            if i == 0 && cut > 0 && valid.is_none() {
                out.valid = out.segments[..from]
                    .iter()
                    .map(|r| docs_from(r, 0))
                    .collect();
                let mut start = 0u32;
                for r in &out.segments[from..] {
                    out.valid.push(docs_from(r, cut.saturating_sub(start)));
                    start += r.row_count();
                }
            } else if !out.valid.is_empty() && valid.is_none() {
                for r in &out.segments[from..] {
                    out.valid.push(docs_from(r, 0));
                }
            }
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

/// The docs of `reader` from `first` on (every doc from 0): a valid-docs bitmap that hides
/// only the rows before `first`.
pub fn docs_from(reader: &SegmentReader, first: u32) -> Arc<RoaringBitmap> {
    let mut b = RoaringBitmap::new();
    b.insert_range(first.min(reader.row_count())..reader.row_count());
    Arc::new(b)
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
    use crate::mutable::{MutableSegment, Offsets};
    use crate::quarantine::{quarantine_batch, quarantine_schema, MessageOrigin, QuarantineEntry};
    use crate::spec::TableSpec;
    use basalt_segment::{evaluate, BuildOptions, CmpOp, Predicate, Value};
    use proptest::prelude::*;

    /// A part of partition 0 from checkpoint `from` holding messages `offsets`: the
    /// multiples of 7 quarantined, the others rows of country `US` when the offset is even.
    fn part(from: i64, offsets: std::ops::Range<i64>) -> Arc<MutablePart> {
        let spec: TableSpec =
            serde_json::from_str(include_str!("../gen_events_spec.json")).unwrap();
        let schema = spec.segment_schema();
        let ingest = crate::decode::ingest_schema(&schema);
        let q = quarantine_schema();
        let part = MutablePart::new(
            0,
            Some(from),
            format!("part-{from}"),
            MutableSegment::new(schema.clone(), ingest, BuildOptions::default()),
            MutableSegment::new(
                q.clone(),
                crate::decode::ingest_schema(&q),
                BuildOptions::default(),
            ),
        );
        let mut body = String::new();
        let mut entries = Vec::new();
        let mut marks = Offsets::default();
        for o in offsets {
            marks.push(o, o % 7 != 0);
            if o % 7 == 0 {
                entries.push(QuarantineEntry {
                    origin: MessageOrigin {
                        topic: "t".into(),
                        partition: 0,
                        offset: o,
                        timestamp: None,
                    },
                    raw: b"{".to_vec(),
                    reason: "bad".into(),
                });
                continue;
            }
            body.push_str(&format!(
                "{{\"event_id\":\"e{o}\",\"ts\":{},\"user_id\":\"u\",\"country\":\"{}\",\"latency_ms\":1}}\n",
                1_795_000_000_000i64 + o,
                if o % 2 == 0 { "US" } else { "DE" }
            ));
        }
        let mut rows = Vec::new();
        crate::decode::decode_ndjson(
            &mut body.as_bytes(),
            &schema,
            7,
            &Default::default(),
            &mut |b| {
                rows.push(b);
                Ok(())
            },
        )
        .unwrap();
        // Appended over several flushes, so the part has several chunks.
        let mut offsets = Some(marks);
        for b in rows {
            part.append(offsets.take().unwrap_or_default(), Some(b), None)
                .unwrap();
            part.rows.snapshot().unwrap();
        }
        let q = quarantine_batch(&entries).unwrap();
        part.append(offsets.unwrap_or_default(), None, q).unwrap();
        Arc::new(part)
    }

    /// Rows of country `US` the readers let a query see.
    fn us(r: &Readers) -> u64 {
        let p = Predicate::Compare {
            column: "country".into(),
            op: CmpOp::Eq,
            value: Value::Str("US".into()),
        };
        r.segments
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let mut docs = evaluate(s, &p).unwrap();
                if let Some(v) = r.valid.get(i) {
                    docs &= v.as_ref();
                }
                docs.len()
            })
            .sum()
    }

    #[test]
    fn a_stream_range_starts_at_any_message_of_a_replica_part() {
        let view = TableView {
            mutable: vec![part(100, 100..160), part(160, 160..200)],
            ..TableView::default()
        };
        let want = |from: i64| (from..200).filter(|o| o % 7 != 0 && o % 2 == 0).count() as u64;
        for after in [100, 101, 105, 130, 159, 160, 170, 199, 200] {
            let r = view.stream_readers(0, Some(after), true).unwrap().unwrap();
            assert_eq!(us(&r), want(after), "rows past {after}");
            assert_eq!(r.position, Some(200));
            if !r.valid.is_empty() {
                assert_eq!(r.valid.len(), r.segments.len());
            }
        }
        // Without splitting, only where a part starts.
        assert!(view.stream_readers(0, Some(130), false).is_none());
        let r = view.stream_readers(0, Some(160), false).unwrap().unwrap();
        assert_eq!(us(&r), want(160));
        // Before the first part, with no sealed segment to chain through: not here.
        assert!(view.stream_readers(0, Some(50), true).is_none());
        assert_eq!(view.stream_visible(0), Some(200));
        assert_eq!(view.stream_visible(1), None);
    }

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
