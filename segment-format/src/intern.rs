//! Interning a column's strings: each distinct string gets the next provisional id, in order
//! of first appearance. In: the strings of one column. Out: an id per string and the distinct
//! strings by id.
//!
//! The table is open addressing over 8-byte slots, each the upper half of the string's hash
//! (a tag) beside its id, so a probe reads one slot and compares strings only when 32 bits of
//! hash agree. A column is interned in two passes: every row's hash first, then the lookups,
//! each reading ahead the slot of a row [`AHEAD`] rows on, so the table's cache misses overlap
//! instead of following one another (on a 10M-event load, `user_id` and `session_id` hold
//! 200,000 distinct values per 1M-row segment: a table larger than the cache).
//!
//! The table is kept per thread between columns and segments, so a builder thread does not
//! fault in and zero a fresh table, grown by doubling, for every column of every segment: on
//! a 10M-event load the tables' growth was the largest source of first-touch page faults.

use std::cell::RefCell;

use arrow::array::{Array, StringArray};

/// A thread's table, kept between columns: its slots, of which the first `dirty` may hold
/// entries and are cleared before use.
struct Spare {
    slots: Vec<u64>,
    dirty: usize,
}

thread_local! {
    static SPARE: RefCell<Spare> = const { RefCell::new(Spare { slots: Vec::new(), dirty: 0 }) };
}

/// A table is kept for the thread's next column only up to this many slots (32 MB).
const KEEP_SLOTS: usize = 1 << 22;

/// Slots a table starts with.
const FIRST_SLOTS: usize = 1 << 10;

/// How many rows ahead a lookup reads its slot.
const AHEAD: usize = 8;

/// A fast hasher for building dictionaries, seeded at random once per process: a client
/// cannot choose strings that collide in the table (fixed seeds would let a body of crafted
/// values make every probe walk one long run). Ids come from first appearance and sorting,
/// so the seeds never affect a segment's bytes.
pub(crate) fn fast_hasher() -> ahash::RandomState {
    use std::hash::BuildHasher;
    static SEEDS: std::sync::OnceLock<[u64; 4]> = std::sync::OnceLock::new();
    let s = SEEDS.get_or_init(|| {
        // The standard library's keys come from the operating system's random source.
        let random = std::collections::hash_map::RandomState::new();
        std::array::from_fn(|i| random.hash_one(i))
    });
    ahash::RandomState::with_seeds(s[0], s[1], s[2], s[3])
}

/// Provisional ids for the strings of one column.
pub(crate) struct Interner<'a> {
    /// `(tag << 32) | (id + 1)` per used slot, 0 when empty; `slots.len()` is a power of two
    /// at least `mask + 1` (the table in use is its first `mask + 1` slots).
    slots: Vec<u64>,
    mask: usize,
    values: Vec<&'a str>,
    hashes: Vec<u64>,
    hasher: ahash::RandomState,
}

impl<'a> Interner<'a> {
    /// An empty interner, over this thread's spare table when it has one.
    pub(crate) fn new() -> Self {
        let Spare { mut slots, dirty } = SPARE.with(|s| {
            std::mem::replace(
                &mut *s.borrow_mut(),
                Spare {
                    slots: Vec::new(),
                    dirty: 0,
                },
            )
        });
        slots[..dirty].fill(0);
        if slots.len() < FIRST_SLOTS {
            slots = vec![0; FIRST_SLOTS];
        }
        Interner {
            slots,
            mask: FIRST_SLOTS - 1,
            values: Vec::new(),
            hashes: Vec::new(),
            hasher: fast_hasher(),
        }
    }

    /// The id of `s`: its first appearance's, or the next one.
    #[inline]
    pub(crate) fn id(&mut self, s: &'a str) -> u32 {
        let h = self.hasher.hash_one(s);
        self.id_hashed(s, h)
    }

    /// Each row's id (`u32::MAX` for a null), reading the table ahead of the lookups: rows are
    /// hashed a chunk at a time, then looked up.
    pub(crate) fn ids_of(&mut self, a: &'a StringArray) -> Vec<u32> {
        const CHUNK: usize = 1024;
        let mut hashes = [0u64; CHUNK];
        let mut out = Vec::with_capacity(a.len());
        for start in (0..a.len()).step_by(CHUNK) {
            let rows = start..(start + CHUNK).min(a.len());
            let hashes = &mut hashes[..rows.len()];
            for (h, row) in hashes.iter_mut().zip(rows.clone()) {
                *h = self.hasher.hash_one(a.value(row));
            }
            for (i, row) in rows.enumerate() {
                if let Some(&ahead) = hashes.get(i + AHEAD) {
                    // A load whose value is not used: it starts the slot's cache miss now.
                    std::hint::black_box(self.slots[ahead as usize & self.mask]);
                }
                out.push(match a.is_valid(row) {
                    true => self.id_hashed(a.value(row), hashes[i]),
                    false => u32::MAX,
                });
            }
        }
        out
    }

    #[inline]
    fn id_hashed(&mut self, s: &'a str, h: u64) -> u32 {
        let tag = h >> 32;
        let mut at = h as usize & self.mask;
        loop {
            let slot = self.slots[at];
            if slot == 0 {
                let id = self.values.len() as u32;
                self.slots[at] = tag << 32 | u64::from(id + 1);
                self.values.push(s);
                self.hashes.push(h);
                if self.values.len() * 2 > self.mask + 1 {
                    self.grow();
                }
                return id;
            }
            if slot >> 32 == tag {
                let id = (slot as u32) - 1;
                if self.values[id as usize] == s {
                    return id;
                }
            }
            at = (at + 1) & self.mask;
        }
    }

    /// Doubles the table and places every id again.
    fn grow(&mut self) {
        let size = (self.mask + 1) * 2;
        match self.slots.len() >= size {
            true => self.slots[..self.mask + 1].fill(0),
            false => self.slots = vec![0; size],
        }
        self.mask = size - 1;
        for (id, &h) in self.hashes.iter().enumerate() {
            let mut at = h as usize & self.mask;
            while self.slots[at] != 0 {
                at = (at + 1) & self.mask;
            }
            self.slots[at] = (h >> 32) << 32 | (id as u64 + 1);
        }
    }

    /// The distinct strings, by id.
    pub(crate) fn into_values(mut self) -> Vec<&'a str> {
        std::mem::take(&mut self.values)
    }
}

impl Drop for Interner<'_> {
    fn drop(&mut self) {
        if self.slots.len() <= KEEP_SLOTS {
            let slots = std::mem::take(&mut self.slots);
            let dirty = self.mask + 1;
            SPARE.with(|s| *s.borrow_mut() = Spare { slots, dirty });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_first_appearance_across_reuse() {
        for _ in 0..3 {
            let words = ["b", "a", "b", "", "c", "a", ""];
            let mut i = Interner::new();
            let ids: Vec<u32> = words.iter().map(|w| i.id(w)).collect();
            assert_eq!(ids, vec![0, 1, 0, 2, 3, 1, 2]);
            assert_eq!(i.into_values(), vec!["b", "a", "", "c"]);
        }
        // Many values: the table grows and keeps every id.
        let owned: Vec<String> = (0..50_000).map(|n| format!("v{}", n % 20_000)).collect();
        let mut i = Interner::new();
        let ids: Vec<u32> = owned.iter().map(|w| i.id(w)).collect();
        assert!(ids
            .iter()
            .enumerate()
            .all(|(n, &id)| id as usize == n % 20_000));
        assert_eq!(i.into_values().len(), 20_000);
    }

    proptest::proptest! {
        /// A column's ids are its values' order of first appearance, nulls `u32::MAX`, the
        /// same through `ids_of` as row by row, over a table reused from larger columns.
        #[test]
        fn ids_of_a_column_are_first_appearances(
            rows in proptest::collection::vec(proptest::option::of(0u32..3000), 0..6000),
        ) {
            let a: StringArray = rows.iter().map(|r| r.map(|v| format!("s{v}"))).collect();
            let mut first = std::collections::HashMap::new();
            let want: Vec<u32> = rows
                .iter()
                .map(|r| match r {
                    Some(v) => {
                        let n = first.len() as u32;
                        *first.entry(*v).or_insert(n)
                    }
                    None => u32::MAX,
                })
                .collect();
            let mut i = Interner::new();
            proptest::prop_assert_eq!(&i.ids_of(&a), &want);
            proptest::prop_assert_eq!(i.into_values().len(), first.len());
            let mut j = Interner::new();
            let by_row: Vec<u32> = (0..a.len())
                .map(|r| if a.is_valid(r) { j.id(a.value(r)) } else { u32::MAX })
                .collect();
            proptest::prop_assert_eq!(by_row, want);
        }
    }
}
