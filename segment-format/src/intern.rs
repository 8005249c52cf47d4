//! Interning a column's strings: each distinct string gets the next provisional id, in order
//! of first appearance. In: the strings of one column. Out: an id per string and the distinct
//! strings by id.
//!
//! The hash table holds only ids (4 bytes a slot; the strings stay in the column) and is kept
//! per thread between columns and segments, so a builder thread does not fault in and zero a
//! fresh table, grown by doubling, for every column of every segment: on a 10M-event load the
//! tables' growth was the largest source of first-touch page faults.

use std::cell::RefCell;

use hashbrown::hash_table::{Entry, HashTable};

thread_local! {
    static SPARE: RefCell<HashTable<u32>> = const { RefCell::new(HashTable::new()) };
}

/// A table is kept for the thread's next column only up to this many slots (about 20 MB).
const KEEP_SLOTS: usize = 1 << 22;

/// A fast hasher for building dictionaries (ids come from sorting, so its seeds do not
/// affect the segment).
pub(crate) fn fast_hasher() -> ahash::RandomState {
    ahash::RandomState::with_seeds(0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344)
}

/// Provisional ids for the strings of one column.
pub(crate) struct Interner<'a> {
    table: HashTable<u32>,
    values: Vec<&'a str>,
    hashes: Vec<u64>,
    hasher: ahash::RandomState,
}

impl<'a> Interner<'a> {
    /// An empty interner, over this thread's spare table when it has one.
    pub(crate) fn new() -> Self {
        let mut table = SPARE.with(|s| std::mem::take(&mut *s.borrow_mut()));
        table.clear();
        Interner {
            table,
            values: Vec::new(),
            hashes: Vec::new(),
            hasher: fast_hasher(),
        }
    }

    /// The id of `s`: its first appearance's, or the next one.
    #[inline]
    pub(crate) fn id(&mut self, s: &'a str) -> u32 {
        let h = self.hasher.hash_one(s);
        let (values, hashes) = (&mut self.values, &mut self.hashes);
        match self
            .table
            .entry(h, |&id| values[id as usize] == s, |&id| hashes[id as usize])
        {
            Entry::Occupied(e) => *e.get(),
            Entry::Vacant(v) => {
                let id = values.len() as u32;
                values.push(s);
                hashes.push(h);
                v.insert(id);
                id
            }
        }
    }

    /// The distinct strings, by id.
    pub(crate) fn into_values(mut self) -> Vec<&'a str> {
        std::mem::take(&mut self.values)
    }
}

impl Drop for Interner<'_> {
    fn drop(&mut self) {
        if self.table.capacity() <= KEEP_SLOTS {
            let table = std::mem::take(&mut self.table);
            SPARE.with(|s| *s.borrow_mut() = table);
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
}
