//! Adapts the ingestion side's [`TableStore`] to the query layer's [`TableSource`]: each call
//! to `snapshot` takes the table's current view — sealed segments plus the real-time
//! partitions' mutable segments, frozen into in-memory chunks — which is then fixed for the
//! query. A real-time table also answers as `<table>$quarantine`, its quarantined messages.

use std::sync::Arc;

use basalt_ingest::quarantine::quarantine_schema;
use basalt_ingest::TableStore;
use basalt_query::{QueryError, TableSnapshot, TableSource};
use basalt_segment::{RoaringBitmap, SegmentSchema};

/// The suffix naming a table's quarantine.
pub const QUARANTINE_SUFFIX: &str = "$quarantine";

#[derive(Debug, Clone)]
pub struct StoreSource(pub Arc<TableStore>);

impl TableSource for StoreSource {
    fn table_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        for n in self.0.table_names() {
            let realtime = self.0.table(&n).is_some_and(|t| t.spec.source.is_some());
            if realtime {
                names.push(format!("{n}{QUARANTINE_SUFFIX}"));
            }
            names.push(n);
        }
        // Unavailable tables keep their names: a query of one says why it cannot run.
        names.extend(self.0.unavailable().into_iter().map(|u| u.table));
        names
    }

    fn schema(&self, name: &str) -> Option<SegmentSchema> {
        match name.strip_suffix(QUARANTINE_SUFFIX) {
            Some(base) => self
                .0
                .table(base)
                .filter(|t| t.spec.source.is_some())
                .map(|_| quarantine_schema()),
            None => self.0.table(name).map(|t| t.schema.clone()).or_else(|| {
                self.0
                    .unavailable_table(name)
                    .and_then(|u| u.spec)
                    .map(|s| s.segment_schema())
            }),
        }
    }

    /// Batch tables only: their view is replaced as a whole when an ingest publishes. A
    /// real-time table's rows change with every message, so it has no version.
    fn data_version(&self, name: &str) -> Option<basalt_query::cache::DataVersion> {
        let t = self.0.table(name)?;
        if t.spec.source.is_some() {
            return None;
        }
        let view = t.view();
        if !view.mutable.is_empty() {
            return None;
        }
        Some(view)
    }

    fn snapshot(&self, name: &str) -> Result<Option<TableSnapshot>, QueryError> {
        let (base, quarantine) = match name.strip_suffix(QUARANTINE_SUFFIX) {
            Some(b) => (b, true),
            None => (name, false),
        };
        let Some(t) = self.0.table(base) else {
            return match self.0.unavailable_table(base) {
                Some(u) => Err(QueryError::Unavailable {
                    table: u.table,
                    reason: u.reason,
                }),
                None => Ok(None),
            };
        };
        if quarantine && t.spec.source.is_none() {
            return Ok(None);
        }
        // One view: a part being sealed is either still in `mutable` or already among the
        // segments, never both.
        let view = t.view();
        let (sealed, schema) = if quarantine {
            (&view.quarantine, quarantine_schema())
        } else {
            (&view.segments, t.schema.clone())
        };
        // Upsert tables: only valid docs. The view's bitmaps were installed after the rows
        // they cover were appended, so rows appended since are beyond them (not valid yet).
        let valid_docs = view.valid.as_ref().filter(|_| !quarantine);
        let none = Arc::new(RoaringBitmap::new());
        let valid_of = |id: &str| valid_docs.and_then(|v| v.get(id)).unwrap_or(&none);
        let mut segments: Vec<_> = sealed.iter().map(|s| s.reader.clone()).collect();
        let mut valid: Vec<Arc<RoaringBitmap>> = match valid_docs {
            Some(_) => sealed
                .iter()
                .map(|s| valid_of(&s.meta.id).clone())
                .collect(),
            None => Vec::new(),
        };
        for part in &view.mutable {
            let m = if quarantine {
                &part.quarantine
            } else {
                &part.rows
            };
            let chunks = m.snapshot_chunks().map_err(|e| QueryError::Snapshot {
                table: name.to_string(),
                source: Box::new(e),
            })?;
            for (reader, start) in chunks {
                if valid_docs.is_some() {
                    let all = valid_of(&part.segment_id);
                    valid.push(Arc::new(slice(all, start, reader.row_count())));
                }
                segments.push(reader);
            }
        }
        Ok(Some(TableSnapshot {
            name: name.to_string(),
            schema,
            segments,
            valid,
        }))
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
