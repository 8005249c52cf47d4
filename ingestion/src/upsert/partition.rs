//! The keyed state of one stream partition (or of a table's batch ingests): its [`KeyMap`],
//! and per segment of the partition — a *slot* — the valid docs (the current row of each live
//! key) and the tombstones (the delete row of each deleted key). In: decoded batches, in
//! arrival order. Out: the rows to append to the partition's mutable segment (PARTIAL rows
//! merged, dedup duplicates dropped), and the changed valid-docs bitmaps for queries.
//!
//! Rules (upsert): a row whose comparison value is below the key's is appended but not valid
//! (out of order); otherwise it becomes the key's row — equal values: the later arrival wins
//! — and the key's previous row stops being valid. A delete row hides its key: it is a
//! tombstone, not valid, and the next accepted row starts fresh. PARTIAL rows are merged
//! with the key's current row (read back from the mutable segment or the sealed segment).
//! Dedup: a row whose key is known is dropped.
//!
//! Doc ids are arrival order within a slot; a sealed segment keeps its mutable segment's
//! order (keyed tables refuse the `sorted` index), so a slot's bitmaps survive the seal.

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::compute::filter_record_batch;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use basalt_segment::{RoaringBitmap, SegmentReader};
use serde::Serialize;

use super::config::{KeyMode, KeyedTable, Strategy};
use super::keymap::{Entry, KeyHash, KeyMap, Location, MAX_DOC, MAX_SLOT};
use super::merge::merge_row;
use super::rows::{cells_to_batch, comparison_values, delete_flags, key_hashes, row_cells, Cell};
use crate::error::{IngestError, Result};
use crate::mutable::MutablePart;

/// Where a slot's rows can be read back (PARTIAL merges, restore).
#[derive(Debug, Clone)]
pub enum SlotRows {
    Part(Arc<MutablePart>),
    Segment(Arc<SegmentReader>),
    /// A batch ingest's segment while it is being built.
    Batch(RecordBatch),
}

#[derive(Debug)]
struct Slot {
    /// The segment id (a mutable part's is the id its sealed segment will have).
    id: String,
    valid: Arc<RoaringBitmap>,
    tombstones: Arc<RoaringBitmap>,
    rows: SlotRows,
    docs: u32,
}

/// A decoded batch with each row's key hash, comparison value and delete flag.
struct Rows<'a> {
    batch: &'a RecordBatch,
    hashes: &'a [KeyHash],
    cmps: &'a [i64],
    deletes: &'a [bool],
}

/// A slot's bitmaps, as persisted with each seal.
#[derive(Debug, Clone)]
pub struct SlotSnapshot {
    pub id: String,
    pub docs: u32,
    pub valid: Arc<RoaringBitmap>,
    pub tombstones: Arc<RoaringBitmap>,
}

/// What a keyed partition did, for status and metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct KeyedCounters {
    /// Rows ignored because their comparison value was below the key's.
    pub out_of_order: u64,
    /// Delete rows accepted.
    pub deletes: u64,
    /// Dedup: rows dropped because their key was known.
    pub duplicates: u64,
    /// Keys first seen in this partition that another partition already holds (the topic
    /// is not keyed by the primary key).
    pub key_conflicts: u64,
    /// Keys forgotten by the metadata TTL.
    pub evicted: u64,
    /// PARTIAL rows refused because their merge could not be stored (an INCREMENT out of
    /// its column's range); quarantined (streams) or refused with the request (batches).
    pub rejected: u64,
}

/// A row [`KeyedPartition::apply`] refused, by its index in the applied batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub row: usize,
    pub column: String,
    pub message: String,
}

#[derive(Debug)]
pub struct KeyedPartition {
    cfg: Arc<KeyedTable>,
    /// The schema of appended batches.
    schema: SchemaRef,
    map: KeyMap,
    slots: Vec<Slot>,
    current: Option<u32>,
    max_comparison: i64,
    /// Upsert: slots whose valid docs changed since the last
    /// [`KeyedPartition::take_changes`] (dedup tables filter no docs at query time).
    dirty: BTreeSet<u32>,
    pub counters: KeyedCounters,
    /// While a [`Savepoint`] is open: what its rollback restores in the key map (keys it
    /// added, and the previous entries of keys it changed).
    journal: Option<Journal>,
    /// Rows the last [`KeyedPartition::apply`] refused (see [`Rejected`]).
    rejected: Vec<Rejected>,
}

#[derive(Debug, Default)]
struct Journal {
    added: Vec<KeyHash>,
    replaced: Vec<(KeyHash, Entry)>,
}

/// The state [`KeyedPartition::rollback`] returns to (a batch ingest is all-or-nothing).
/// Bitmaps are shared copy-on-write, so keeping them costs nothing until they change.
#[derive(Debug)]
pub struct Savepoint {
    slots: usize,
    bitmaps: Vec<(Arc<RoaringBitmap>, Arc<RoaringBitmap>, u32)>,
    current: Option<u32>,
    max_comparison: i64,
    counters: KeyedCounters,
}

fn corrupt(msg: String) -> IngestError {
    IngestError::Keyed(msg)
}

impl KeyedPartition {
    pub fn new(cfg: Arc<KeyedTable>, schema: SchemaRef) -> Self {
        KeyedPartition {
            cfg,
            schema,
            map: KeyMap::new(),
            slots: Vec::new(),
            current: None,
            max_comparison: i64::MIN,
            dirty: BTreeSet::new(),
            counters: KeyedCounters::default(),
            journal: None,
            rejected: Vec::new(),
        }
    }

    /// The rows the last [`KeyedPartition::apply`] refused, by index in its batch.
    pub fn take_rejected(&mut self) -> Vec<Rejected> {
        std::mem::take(&mut self.rejected)
    }

    /// Starts recording changes so that [`KeyedPartition::rollback`] can undo them (until
    /// [`KeyedPartition::commit`]). TTL eviction waits for the commit.
    pub fn savepoint(&mut self) -> Savepoint {
        self.journal = Some(Journal::default());
        Savepoint {
            slots: self.slots.len(),
            bitmaps: self
                .slots
                .iter()
                .map(|s| (s.valid.clone(), s.tombstones.clone(), s.docs))
                .collect(),
            current: self.current,
            max_comparison: self.max_comparison,
            counters: self.counters,
        }
    }

    /// Keeps the changes since the savepoint.
    pub fn commit(&mut self) {
        self.journal = None;
    }

    /// Undoes every change since `sp`: key map entries, slots, bitmaps, counters.
    pub fn rollback(&mut self, sp: Savepoint) {
        if let Some(j) = self.journal.take() {
            for (h, e) in j.replaced.into_iter().rev() {
                self.map.insert(h, e);
            }
            for h in j.added {
                self.map.remove(h);
            }
        }
        self.slots.truncate(sp.slots);
        for (s, (valid, tombstones, docs)) in self.slots.iter_mut().zip(sp.bitmaps) {
            s.valid = valid;
            s.tombstones = tombstones;
            s.docs = docs;
        }
        self.current = sp.current;
        self.max_comparison = sp.max_comparison;
        self.counters = sp.counters;
        self.dirty.clear();
    }

    /// Sets a key's entry, journaled while a savepoint is open.
    fn put(&mut self, h: KeyHash, e: Entry) {
        let prev = self.map.insert(h, e);
        if let Some(j) = &mut self.journal {
            match prev {
                Some(p) => j.replaced.push((h, p)),
                None => j.added.push(h),
            }
        }
    }

    pub fn keys(&self) -> usize {
        self.map.len()
    }

    pub fn contains(&self, h: KeyHash) -> bool {
        self.map.get(h).is_some()
    }

    /// Bytes of the key map and the bitmaps.
    pub fn memory_bytes(&self) -> usize {
        self.map.memory_bytes()
            + self
                .slots
                .iter()
                .map(|s| s.valid.serialized_size() + s.tombstones.serialized_size())
                .sum::<usize>()
    }

    fn slot(&self, i: u32) -> Result<&Slot> {
        self.slots
            .get(i as usize)
            .ok_or_else(|| corrupt(format!("keyed state: no slot {i}")))
    }

    fn push_slot(&mut self, slot: Slot) -> Result<u32> {
        let i = self.slots.len() as u32;
        if i > MAX_SLOT {
            return Err(corrupt(format!(
                "keyed state: more than {MAX_SLOT} segments in one partition"
            )));
        }
        self.slots.push(slot);
        Ok(i)
    }

    /// Rebuilds a partition from its persisted snapshot: `segment` opens each slot's sealed
    /// segment. Keys past the TTL are evicted.
    pub fn restore(
        cfg: Arc<KeyedTable>,
        schema: SchemaRef,
        slots: &[SlotSnapshot],
        segment: impl Fn(&str) -> Option<Arc<SegmentReader>>,
    ) -> Result<Self> {
        let mut k = KeyedPartition::new(cfg, schema);
        for slot in slots {
            let reader = segment(&slot.id).ok_or_else(|| {
                corrupt(format!(
                    "the keyed snapshot names segment {} which is not published",
                    slot.id
                ))
            })?;
            k.restore_segment(reader, slot)
                .map_err(|e| corrupt(format!("restoring keys of segment {}: {e}", slot.id)))?;
        }
        k.evict();
        Ok(k)
    }

    /// Restores a sealed segment of the partition from its persisted bitmaps: the key map
    /// gets an entry for each valid doc and each tombstone.
    fn restore_segment(&mut self, reader: Arc<SegmentReader>, snap: &SlotSnapshot) -> Result<()> {
        if snap.docs != reader.row_count() {
            return Err(corrupt(format!(
                "keyed snapshot of segment {} says {} docs, the segment has {}",
                snap.id,
                snap.docs,
                reader.row_count()
            )));
        }
        let slot = self.push_slot(Slot {
            id: snap.id.clone(),
            valid: snap.valid.clone(),
            tombstones: snap.tombstones.clone(),
            rows: SlotRows::Segment(reader.clone()),
            docs: snap.docs,
        })?;
        let mut cols: Vec<usize> = self.cfg.key.clone();
        cols.push(self.cfg.comparison);
        let nkey = self.cfg.key.len();
        for (bitmap, deleted) in [(&snap.valid, false), (&snap.tombstones, true)] {
            let docs: Vec<u32> = bitmap.iter().collect();
            for chunk in docs.chunks(65_536) {
                if chunk.last().is_some_and(|&d| d >= snap.docs) {
                    return Err(corrupt(format!(
                        "keyed snapshot of segment {} names a doc past its end",
                        snap.id
                    )));
                }
                let b = reader.read_batch(&cols, chunk)?;
                let key_cols: Vec<_> = b.columns()[..nkey].iter().collect();
                let hashes = key_hashes(&key_cols, b.num_rows())?;
                let cmps = comparison_values(b.column(nkey))?;
                for ((h, c), &doc) in hashes.into_iter().zip(cmps).zip(chunk) {
                    let e = Entry {
                        location: Location { slot, doc },
                        comparison: c,
                        deleted,
                    };
                    // Keys the TTL forgot can have two valid rows; the newest owns the key.
                    match self.map.get(h) {
                        Some(cur) if cur.comparison > c => {}
                        _ => {
                            self.map.insert(h, e);
                        }
                    }
                    self.max_comparison = self.max_comparison.max(c);
                }
            }
        }
        Ok(())
    }

    /// A new mutable part receives the next rows.
    pub fn start_part(&mut self, part: Arc<MutablePart>) -> Result<()> {
        let slot = self.push_slot(Slot {
            id: part.segment_id.clone(),
            valid: Arc::new(RoaringBitmap::new()),
            tombstones: Arc::new(RoaringBitmap::new()),
            rows: SlotRows::Part(part),
            docs: 0,
        })?;
        self.current = Some(slot);
        Ok(())
    }

    /// Applies the rows of one batch-ingest segment `id` (a new slot); returns the rows the
    /// segment holds, in doc order. They are read from memory until
    /// [`KeyedPartition::sealed`] says the segment is built.
    pub fn apply_segment(
        &mut self,
        id: String,
        batch: &RecordBatch,
    ) -> Result<Option<RecordBatch>> {
        let slot = self.push_slot(Slot {
            id,
            valid: Arc::new(RoaringBitmap::new()),
            tombstones: Arc::new(RoaringBitmap::new()),
            rows: SlotRows::Batch(RecordBatch::new_empty(self.schema.clone())),
            docs: 0,
        })?;
        self.current = Some(slot);
        let out = self.apply(batch, &|_| false)?;
        // A batch request is all-or-nothing: a refused merge fails it, naming the row.
        if let Some(r) = self.take_rejected().into_iter().next() {
            return Err(IngestError::BadRow {
                location: format!("row {} of the segment being built", r.row + 1),
                column: r.column,
                message: r.message,
            });
        }
        match &out {
            Some(rows) => self.slots[slot as usize].rows = SlotRows::Batch(rows.clone()),
            None => {
                // Nothing kept (dedup duplicates only): no segment, no slot.
                self.slots.pop();
                self.current = None;
            }
        }
        Ok(out)
    }

    /// The part `id` was sealed into `reader` (same docs): rows are read from there now and
    /// the part's memory can go.
    pub fn sealed(&mut self, id: &str, reader: Arc<SegmentReader>) {
        for s in self.slots.iter_mut() {
            if s.id == id {
                s.rows = SlotRows::Segment(reader);
                return;
            }
        }
    }

    /// Bitmaps of every slot holding rows, for the snapshot persisted with a seal.
    pub fn snapshot(&self) -> Vec<SlotSnapshot> {
        self.slots
            .iter()
            .filter(|s| s.docs > 0)
            .map(|s| SlotSnapshot {
                id: s.id.clone(),
                docs: s.docs,
                valid: s.valid.clone(),
                tombstones: s.tombstones.clone(),
            })
            .collect()
    }

    /// Every slot's valid docs (segment id → bitmap), for the table's query view.
    pub fn valid_docs(&self) -> Vec<(String, Arc<RoaringBitmap>)> {
        self.slots
            .iter()
            .map(|s| (s.id.clone(), s.valid.clone()))
            .collect()
    }

    /// Valid docs changed since the last call (always none for dedup).
    pub fn take_changes(&mut self) -> Vec<(String, Arc<RoaringBitmap>)> {
        let dirty = std::mem::take(&mut self.dirty);
        dirty
            .into_iter()
            .map(|i| &self.slots[i as usize])
            .map(|s| (s.id.clone(), s.valid.clone()))
            .collect()
    }

    /// Sets or clears `loc` in its slot's valid docs (`tombstone`: its tombstones).
    fn mark(&mut self, loc: Location, tombstone: bool, on: bool) {
        let s = &mut self.slots[loc.slot as usize];
        let bm = Arc::make_mut(if tombstone {
            &mut s.tombstones
        } else {
            &mut s.valid
        });
        if on {
            bm.insert(loc.doc);
        } else {
            bm.remove(loc.doc);
        }
        if !tombstone && self.cfg.is_upsert() {
            self.dirty.insert(loc.slot);
        }
    }

    fn set_valid(&mut self, loc: Location, valid: bool) {
        self.mark(loc, false, valid);
    }

    fn set_tombstone(&mut self, loc: Location, on: bool) {
        self.mark(loc, true, on);
    }

    /// Row `loc` as cells: from `pending` (rows of this call not appended yet, from doc
    /// `base` of the current slot), the mutable part, or the sealed segment.
    fn row_at(&self, loc: Location, base: u32, pending: &[Vec<Cell>]) -> Result<Vec<Cell>> {
        if Some(loc.slot) == self.current && loc.doc >= base {
            return pending
                .get((loc.doc - base) as usize)
                .cloned()
                .ok_or_else(|| corrupt(format!("keyed state: doc {} not decoded yet", loc.doc)));
        }
        let missing = || {
            corrupt(format!(
                "keyed state: slot {} has no doc {}",
                loc.slot, loc.doc
            ))
        };
        let batch = match &self.slot(loc.slot)?.rows {
            SlotRows::Part(p) => p.rows.row(loc.doc as usize).ok_or_else(missing)?,
            SlotRows::Batch(b) if (loc.doc as usize) < b.num_rows() => b.slice(loc.doc as usize, 1),
            SlotRows::Batch(_) => return Err(missing()),
            SlotRows::Segment(r) => {
                let all: Vec<usize> = (0..self.schema.fields().len()).collect();
                r.read_batch(&all, &[loc.doc])?
            }
        };
        row_cells(&batch, 0)
    }

    /// Applies decoded rows in arrival order; returns what to append to the current part
    /// (every row for upsert, PARTIAL rows merged; dedup without duplicates). `elsewhere`
    /// says whether another partition holds a key.
    pub fn apply(
        &mut self,
        batch: &RecordBatch,
        elsewhere: &dyn Fn(KeyHash) -> bool,
    ) -> Result<Option<RecordBatch>> {
        let cur = self
            .current
            .ok_or_else(|| corrupt("keyed state: no part to append to".into()))?;
        let base = self.slot(cur)?.docs;
        let n = batch.num_rows();
        if n == 0 {
            return Ok(None);
        }
        if base as usize + n > MAX_DOC as usize + 1 {
            return Err(corrupt(format!(
                "keyed state: a segment of a keyed table holds at most {} rows",
                MAX_DOC as u64 + 1
            )));
        }
        let cfg = self.cfg.clone();
        let key_cols: Vec<_> = cfg.key.iter().map(|&i| batch.column(i)).collect();
        let hashes = key_hashes(&key_cols, n)?;
        let cmps = comparison_values(batch.column(cfg.comparison))?;
        let at = Location {
            slot: cur,
            doc: base,
        };
        let out = match &cfg.mode {
            KeyMode::Dedup => self.dedup(batch, at, &hashes, &cmps, elsewhere)?,
            mode => {
                let deletes = match cfg.delete {
                    Some(d) => delete_flags(batch.column(d))?,
                    None => vec![false; n],
                };
                let strategies = match mode {
                    KeyMode::Partial(s) => Some(s.as_slice()),
                    _ => None,
                };
                let rows = Rows {
                    batch,
                    hashes: &hashes,
                    cmps: &cmps,
                    deletes: &deletes,
                };
                Some(self.upsert(rows, at, strategies, elsewhere)?)
            }
        };
        self.slots[cur as usize].docs += out.as_ref().map_or(0, |b| b.num_rows()) as u32;
        Ok(out)
    }

    /// Dedup: keeps the rows of unknown keys (the first of each), from doc `at`.
    fn dedup(
        &mut self,
        batch: &RecordBatch,
        mut at: Location,
        hashes: &[KeyHash],
        cmps: &[i64],
        elsewhere: &dyn Fn(KeyHash) -> bool,
    ) -> Result<Option<RecordBatch>> {
        let mut keep = Vec::with_capacity(hashes.len());
        for (&h, &c) in hashes.iter().zip(cmps) {
            self.max_comparison = self.max_comparison.max(c);
            if self.map.get(h).is_some() {
                self.counters.duplicates += 1;
                keep.push(false);
                continue;
            }
            if elsewhere(h) {
                self.counters.key_conflicts += 1;
            }
            self.put(
                h,
                Entry {
                    location: at,
                    comparison: c,
                    deleted: false,
                },
            );
            self.set_valid(at, true);
            keep.push(true);
            at.doc += 1;
        }
        let kept = filter_record_batch(batch, &arrow::array::BooleanArray::from(keep))?;
        Ok((kept.num_rows() > 0).then_some(kept))
    }

    /// Upsert: every row is appended from doc `at`; each accepted one becomes its key's row
    /// (merged with the key's current row when `strategies` are given: PARTIAL).
    fn upsert(
        &mut self,
        rows: Rows<'_>,
        at: Location,
        strategies: Option<&[Strategy]>,
        elsewhere: &dyn Fn(KeyHash) -> bool,
    ) -> Result<RecordBatch> {
        let mut merged: Vec<Vec<Cell>> = Vec::new();
        let types: Vec<arrow::datatypes::DataType> = match strategies {
            Some(_) => self
                .schema
                .fields()
                .iter()
                .map(|f| f.data_type().clone())
                .collect(),
            None => Vec::new(),
        };
        for i in 0..rows.batch.num_rows() {
            let (h, c, deleted) = (rows.hashes[i], rows.cmps[i], rows.deletes[i]);
            let loc = Location {
                slot: at.slot,
                doc: at.doc + i as u32,
            };
            let prev = self.map.get(h);
            let new_cells = match strategies {
                Some(_) => Some(row_cells(rows.batch, i)?),
                None => None,
            };
            if prev.is_some_and(|p| c < p.comparison) {
                self.counters.out_of_order += 1;
                merged.extend(new_cells);
                continue;
            }
            // PARTIAL: merge before anything changes. A merge that cannot be stored (an
            // INCREMENT past its type) refuses the row: it is appended but not valid, the key
            // keeps its row, and the caller reports it (quarantine, or the request's error).
            let row = match (strategies, new_cells.as_ref(), prev) {
                (Some(st), Some(new), Some(p)) if !p.deleted && !deleted => {
                    let old = self.row_at(p.location, at.doc, &merged)?;
                    match merge_row(st, &types, &old, new.clone()) {
                        Ok(r) => Some(r),
                        Err(e) => {
                            self.counters.rejected += 1;
                            let column = self.schema.field(e.column).name().clone();
                            self.rejected.push(Rejected {
                                row: i,
                                column,
                                message: e.message,
                            });
                            merged.extend(new_cells);
                            continue;
                        }
                    }
                }
                _ => new_cells,
            };
            self.max_comparison = self.max_comparison.max(c);
            match prev {
                None if elsewhere(h) => self.counters.key_conflicts += 1,
                None => {}
                Some(p) if p.deleted => self.set_tombstone(p.location, false),
                Some(p) => self.set_valid(p.location, false),
            }
            if deleted {
                self.counters.deletes += 1;
                self.set_tombstone(loc, true);
            } else {
                self.set_valid(loc, true);
            }
            merged.extend(row);
            self.put(
                h,
                Entry {
                    location: loc,
                    comparison: c,
                    deleted,
                },
            );
        }
        match strategies {
            Some(_) => cells_to_batch(&self.schema, &merged),
            None => Ok(rows.batch.clone()),
        }
    }

    /// Forgets keys whose comparison value is below the largest seen minus the TTL. Their
    /// rows stay valid (as in Pinot: a later row for such a key is taken as a new key);
    /// forgotten tombstones are dropped.
    pub fn evict(&mut self) {
        let Some(ttl) = self.cfg.ttl_ms else { return };
        if self.max_comparison == i64::MIN {
            return;
        }
        let min = self.max_comparison.saturating_sub(ttl);
        let mut dropped = Vec::new();
        let n = self.map.evict_below(min, |e| {
            if e.deleted {
                dropped.push(e.location);
            }
        });
        for loc in dropped {
            self.set_tombstone(loc, false);
        }
        self.counters.evicted += n as u64;
    }
}
