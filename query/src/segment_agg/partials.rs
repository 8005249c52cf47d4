//! What each slice of a segment contributed to a GROUP BY, kept for the next query that asks
//! the same. In: a segment reader's instance id and a slice of its blocks, the aggregation's
//! fingerprint (keys, aggregates and their arguments), the predicate as it reads on that
//! slice ([`basalt_segment::simplify_for_blocks`]) and, for upsert tables, the segment's
//! valid docs. Out: that slice's group keys and accumulator states from an earlier query
//! with the same key, which the aggregation merges instead of reading the slice.
//!
//! Sealed segments and the frozen chunks of mutable ones never change, so a dashboard whose
//! time range moves with the clock recomputes only the slices its range cuts and the chunks
//! frozen since its last refresh (Druid caches per segment; slices also spare the segment a
//! moving range cuts). An upsert table's valid docs do change: an entry keeps the bitmap it
//! was computed under and answers only while the segment's current one is equal, so an
//! update invalidates exactly the segments whose valid docs it changed. Bounded by bytes,
//! least recently used first out. A slice one query is computing is waited for by the others
//! that ask for it ([`PartialAggregates::lookup`]), so a new chunk's rows are aggregated once,
//! not by every panel of the dashboard in the same second.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arrow::array::RecordBatch;
use parking_lot::Mutex;
use roaring::RoaringBitmap;

/// Identifies one segment's contribution to one aggregation.
#[derive(Clone)]
pub(crate) struct PartialKey {
    pub(crate) segment: u64,
    /// The slice's first block.
    pub(crate) slice: u32,
    /// The aggregation's fingerprint, shared by every segment of one plan.
    pub(crate) fragment: Arc<Fragment>,
    /// The predicate as it reads on this segment (`Debug` of the simplified tree).
    pub(crate) predicate: String,
}

/// An aggregation's fingerprint and its hash (computed once per plan).
#[derive(Debug)]
pub(crate) struct Fragment {
    pub(crate) text: String,
    hash: u64,
}

impl Fragment {
    pub(crate) fn new(text: String) -> Self {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        text.hash(&mut h);
        Fragment {
            hash: h.finish(),
            text,
        }
    }
}

impl PartialEq for PartialKey {
    fn eq(&self, other: &Self) -> bool {
        self.segment == other.segment
            && self.slice == other.slice
            && self.predicate == other.predicate
            && (Arc::ptr_eq(&self.fragment, &other.fragment)
                || (self.fragment.hash == other.fragment.hash
                    && self.fragment.text == other.fragment.text))
    }
}

impl Eq for PartialKey {}

impl Hash for PartialKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.segment.hash(state);
        self.slice.hash(state);
        self.fragment.hash.hash(state);
        self.predicate.hash(state);
    }
}

/// One segment's part of an aggregation.
#[derive(Clone)]
pub(crate) enum Partial {
    /// The group keys (one column per key) then each accumulator's state columns; `widths`
    /// says how many state columns each accumulator has.
    States {
        batch: RecordBatch,
        widths: Arc<[usize]>,
    },
    /// The segment had more groups than are worth keeping: aggregate it in place.
    TooMany,
}

impl Partial {
    fn bytes(&self) -> usize {
        match self {
            Partial::States { batch, widths } => batch.get_array_memory_size() + widths.len() * 8,
            Partial::TooMany => 0,
        }
    }
}

struct Entry {
    valid: Option<Arc<RoaringBitmap>>,
    partial: Partial,
    bytes: usize,
    /// Position in the recency order.
    tick: u64,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<PartialKey, Entry>,
    /// tick → key, oldest first.
    order: BTreeMap<u64, PartialKey>,
    next_tick: u64,
    bytes: usize,
}

impl Inner {
    fn remove(&mut self, key: &PartialKey) {
        if let Some(e) = self.entries.remove(key) {
            self.order.remove(&e.tick);
            self.bytes -= e.bytes + key_bytes(key);
        }
    }
}

fn key_bytes(k: &PartialKey) -> usize {
    // The fragment text is shared by the plan's entries; its share is counted once per key
    // to stay an upper bound.
    std::mem::size_of::<PartialKey>() + k.predicate.len() + k.fragment.text.len()
}

/// Counters for metrics.
#[derive(Debug, Default)]
pub struct PartialCacheStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub evictions: AtomicU64,
}

/// Segments with fewer rows (the newest chunks of a mutable segment, replaced at every
/// flush) are aggregated in place, never kept.
const MIN_ROWS: u32 = 4_096;

/// Per-segment partial aggregates, bounded by bytes.
pub struct PartialAggregates {
    inner: Mutex<Inner>,
    max_bytes: usize,
    min_rows: u32,
    /// Slices some query is computing now: other queries wait for its result instead of
    /// computing the same rows at the same time (every panel of a dashboard misses a new
    /// chunk's slices in the same second).
    flights: Mutex<HashMap<PartialKey, Arc<Flight>>>,
    pub stats: PartialCacheStats,
}

/// One slice being computed; waiters are woken when its computation ends either way.
#[derive(Default)]
struct Flight {
    done: Mutex<bool>,
    cv: parking_lot::Condvar,
}

/// Longest a query waits for another's computation of a slice before computing it itself.
const FLIGHT_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// What [`PartialAggregates::lookup`] found.
pub(crate) enum Lookup<'a> {
    Kept(Partial),
    /// Compute the slice; while the claim lives, other queries asking for it wait. (No claim:
    /// another query's computation did not leave a usable part.)
    Compute(Option<Claim<'a>>),
}

/// The right to compute one slice; dropping it (after [`PartialAggregates::put`], or on an
/// error or cancellation) wakes the queries waiting for it.
pub(crate) struct Claim<'a> {
    cache: &'a PartialAggregates,
    key: PartialKey,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let flight = self.cache.flights.lock().remove(&self.key);
        if let Some(f) = flight {
            *f.done.lock() = true;
            f.cv.notify_all();
        }
    }
}

impl std::fmt::Debug for PartialAggregates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PartialAggregates(max {} bytes)", self.max_bytes)
    }
}

/// The same docs, judged cheaply when the bitmap was not replaced.
fn same_valid(a: &Option<Arc<RoaringBitmap>>, b: Option<&Arc<RoaringBitmap>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a == b,
        _ => false,
    }
}

impl PartialAggregates {
    pub fn new(max_bytes: usize) -> Self {
        PartialAggregates {
            inner: Mutex::new(Inner::default()),
            max_bytes,
            min_rows: MIN_ROWS,
            flights: Mutex::new(HashMap::new()),
            stats: PartialCacheStats::default(),
        }
    }

    /// The slice's kept part; or, when another query is computing it, that query's result
    /// once it is done; or the right to compute it. Blocks (on a blocking thread) while it
    /// waits, at most [`FLIGHT_WAIT`]. A query holds at most one claim at a time, so waits
    /// cannot form a cycle.
    pub(crate) fn lookup(
        &self,
        key: &PartialKey,
        valid: Option<&Arc<RoaringBitmap>>,
    ) -> Lookup<'_> {
        if let Some(p) = self.get(key, valid) {
            return Lookup::Kept(p);
        }
        let running = {
            let mut flights = self.flights.lock();
            match flights.get(key) {
                Some(f) => Some(f.clone()),
                None => {
                    flights.insert(key.clone(), Arc::new(Flight::default()));
                    None
                }
            }
        };
        let Some(flight) = running else {
            return Lookup::Compute(Some(Claim {
                cache: self,
                key: key.clone(),
            }));
        };
        let began = std::time::Instant::now();
        {
            let mut done = flight.done.lock();
            let until = began + FLIGHT_WAIT;
            while !*done {
                if flight.cv.wait_until(&mut done, until).timed_out() {
                    break;
                }
            }
        }
        tracing::trace!(
            segment = key.segment,
            slice = key.slice,
            waited_us = began.elapsed().as_micros() as u64,
            "waited for another query's computation of a slice"
        );
        match self.get(key, valid) {
            Some(p) => Lookup::Kept(p),
            None => Lookup::Compute(None),
        }
    }

    /// The same cache keeping segments of at least `rows` rows (default 4,096).
    pub fn with_min_rows(mut self, rows: u32) -> Self {
        self.min_rows = rows;
        self
    }

    /// Whether a segment of `rows` rows is worth keeping.
    pub(crate) fn keeps(&self, rows: u32) -> bool {
        rows >= self.min_rows
    }

    /// Bytes held now.
    pub fn bytes(&self) -> usize {
        self.inner.lock().bytes
    }

    /// The segment's part computed under the same valid docs, if kept.
    pub(crate) fn get(
        &self,
        key: &PartialKey,
        valid: Option<&Arc<RoaringBitmap>>,
    ) -> Option<Partial> {
        let mut inner = self.inner.lock();
        let Some(e) = inner.entries.get(key) else {
            self.stats.misses.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        if !same_valid(&e.valid, valid) {
            // Computed under valid docs that have changed since.
            inner.remove(key);
            self.stats.misses.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let old = e.tick;
        let tick = inner.next_tick;
        inner.next_tick += 1;
        let e = inner.entries.get_mut(key).expect("present");
        e.tick = tick;
        let partial = e.partial.clone();
        let k = inner.order.remove(&old).expect("ordered");
        inner.order.insert(tick, k);
        self.stats.hits.fetch_add(1, Ordering::Relaxed);
        Some(partial)
    }

    /// Keeps a segment's part (one entry may take a sixteenth of the cache).
    pub(crate) fn put(&self, key: PartialKey, valid: Option<Arc<RoaringBitmap>>, partial: Partial) {
        let bytes = partial.bytes() + valid.as_ref().map_or(0, |v| v.serialized_size());
        let total = bytes + key_bytes(&key);
        if total > self.max_bytes / 16 {
            return;
        }
        let mut inner = self.inner.lock();
        inner.remove(&key);
        while inner.bytes + total > self.max_bytes {
            let Some((_, oldest)) = inner.order.pop_first() else {
                break;
            };
            if let Some(e) = inner.entries.remove(&oldest) {
                inner.bytes -= e.bytes + key_bytes(&oldest);
                self.stats.evictions.fetch_add(1, Ordering::Relaxed);
            }
        }
        let tick = inner.next_tick;
        inner.next_tick += 1;
        inner.bytes += total;
        inner.order.insert(tick, key.clone());
        inner.entries.insert(
            key,
            Entry {
                valid,
                partial,
                bytes,
                tick,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, Int64Array};

    fn key(segment: u64, fragment: &Arc<Fragment>, predicate: &str) -> PartialKey {
        PartialKey {
            segment,
            slice: 0,
            fragment: fragment.clone(),
            predicate: predicate.into(),
        }
    }

    fn states(n: i64) -> Partial {
        let col: ArrayRef = Arc::new(Int64Array::from_iter_values(0..n));
        Partial::States {
            batch: RecordBatch::try_from_iter([("k", col)]).unwrap(),
            widths: Arc::from(vec![]),
        }
    }

    fn rows(p: Option<Partial>) -> Option<usize> {
        match p? {
            Partial::States { batch, .. } => Some(batch.num_rows()),
            Partial::TooMany => Some(usize::MAX),
        }
    }

    #[test]
    fn keys_match_on_segment_fragment_text_and_predicate() {
        let c = PartialAggregates::new(1 << 20);
        let f = Arc::new(Fragment::new("sum(x) by k".into()));
        c.put(key(1, &f, "None"), None, states(3));
        assert_eq!(rows(c.get(&key(1, &f, "None"), None)), Some(3));
        // An equal fragment built by another plan.
        let g = Arc::new(Fragment::new("sum(x) by k".into()));
        assert_eq!(rows(c.get(&key(1, &g, "None"), None)), Some(3));
        assert_eq!(rows(c.get(&key(2, &f, "None"), None)), None);
        assert_eq!(rows(c.get(&key(1, &f, "Some(t > 5)"), None)), None);
        let h = Arc::new(Fragment::new("sum(y) by k".into()));
        assert_eq!(rows(c.get(&key(1, &h, "None"), None)), None);
    }

    #[test]
    fn changed_valid_docs_invalidate_the_entry() {
        let c = PartialAggregates::new(1 << 20);
        let f = Arc::new(Fragment::new("count by k".into()));
        let v1 = Arc::new(RoaringBitmap::from_iter([1u32, 2, 3]));
        c.put(key(7, &f, "None"), Some(v1.clone()), states(2));
        // The same docs in another bitmap: still valid.
        let same = Arc::new(RoaringBitmap::from_iter([1u32, 2, 3]));
        assert_eq!(rows(c.get(&key(7, &f, "None"), Some(&same))), Some(2));
        assert_eq!(rows(c.get(&key(7, &f, "None"), None)), None);
        // An update superseded doc 2: gone for good.
        let v2 = Arc::new(RoaringBitmap::from_iter([1u32, 3, 4]));
        assert_eq!(rows(c.get(&key(7, &f, "None"), Some(&v2))), None);
        assert_eq!(rows(c.get(&key(7, &f, "None"), Some(&v1))), None);
        assert_eq!(c.bytes(), 0);
    }

    #[test]
    fn least_recently_used_go_first() {
        let f = Arc::new(Fragment::new("f".into()));
        let k = |i: u64| key(i, &f, "p");
        let per = states(10).bytes() + key_bytes(&k(0));
        let c = PartialAggregates::new(per * 20);
        for i in 0..20 {
            c.put(k(i), None, states(10));
        }
        assert_eq!(c.bytes(), per * 20);
        // Using 0 makes 1 the oldest.
        assert!(c.get(&k(0), None).is_some());
        c.put(k(20), None, states(10));
        assert!(c.get(&k(1), None).is_none());
        assert!(c.get(&k(0), None).is_some());
        assert!(c.get(&k(20), None).is_some());
        assert_eq!(c.stats.evictions.load(Ordering::Relaxed), 1);
        assert_eq!(c.bytes(), per * 20);
    }

    #[test]
    fn a_slice_being_computed_is_waited_for() {
        let c = Arc::new(PartialAggregates::new(1 << 20));
        let f = Arc::new(Fragment::new("f".into()));
        let k = key(5, &f, "p");
        let Lookup::Compute(Some(claim)) = c.lookup(&k, None) else {
            panic!("the first asker computes");
        };
        let waiter = {
            let (c, k) = (c.clone(), k.clone());
            std::thread::spawn(move || match c.lookup(&k, None) {
                Lookup::Kept(p) => rows(Some(p)),
                Lookup::Compute(_) => None,
            })
        };
        std::thread::sleep(std::time::Duration::from_millis(50));
        c.put(k.clone(), None, states(4));
        drop(claim);
        assert_eq!(waiter.join().unwrap(), Some(4));
        // A computation that ends without a part (an error) lets the waiter compute.
        let k2 = key(6, &f, "p");
        let Lookup::Compute(Some(claim)) = c.lookup(&k2, None) else {
            panic!("the first asker computes");
        };
        let waiter = {
            let (c, k2) = (c.clone(), k2.clone());
            std::thread::spawn(move || matches!(c.lookup(&k2, None), Lookup::Compute(None)))
        };
        std::thread::sleep(std::time::Duration::from_millis(20));
        drop(claim);
        assert!(waiter.join().unwrap());
        assert!(c.flights.lock().is_empty());
    }

    #[test]
    fn too_large_entries_are_not_kept() {
        let c = PartialAggregates::new(64 << 10);
        let f = Arc::new(Fragment::new("f".into()));
        c.put(key(1, &f, "p"), None, states(10_000));
        assert_eq!(rows(c.get(&key(1, &f, "p"), None)), None);
        c.put(key(2, &f, "p"), None, Partial::TooMany);
        assert_eq!(rows(c.get(&key(2, &f, "p"), None)), Some(usize::MAX));
    }
}
