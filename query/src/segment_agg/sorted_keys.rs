//! Group-key ids for one string GROUP BY key by merging segments' sorted dictionaries, with
//! no hash table. In: every segment's dictionary of the key (each strictly ascending in byte
//! order, as the segment builder writes it), the part of the key's values one worker owns (a
//! range between two values of the largest dictionary), and the worker's empty interner.
//! Out: for each dictionary, the key id of every entry ([`FOREIGN`] outside the range,
//! padded with `u32::MAX` to a power of two as the row loops expect), and the interner
//! holding the range's distinct values in order.
//!
//! On a high-cardinality key (900k users over ten 1M-row segments, 2M dictionary entries)
//! hashing each entry into a table of a million groups costs a cache miss or two per entry
//! and was a third of the query's CPU. The dictionaries are already sorted: a k-way merge
//! reads each front to back and compares neighbouring strings, and equal values from
//! different segments come out together and take one id. Workers split the values by range
//! (each binary-searches its bounds in every dictionary), so no worker reads another's
//! entries.
//!
//! A dictionary found out of order is a corrupt segment: the merge stops with an error
//! rather than give a value two ids.

use std::cmp::Reverse;
use std::collections::binary_heap::{BinaryHeap, PeekMut};

use arrow::array::{Array, StringArray};
use datafusion::error::{DataFusionError, Result as DfResult};

use super::exec::{key_ids_len, Cancel};
use super::keys::{KeyInterner, KeyKind, Part, FOREIGN};

/// The values part `part` owns: `lo..hi` in byte order (`None`: unbounded), cut at
/// quantiles of the largest dictionary so the parts get about as many values each.
pub(crate) fn bounds<'a>(dicts: &[&'a StringArray], part: Part) -> Range<'a> {
    let Some(big) = dicts.iter().max_by_key(|d| d.len()) else {
        return Range { lo: None, hi: None };
    };
    let cut = |i: u32| -> Option<&'a [u8]> {
        if i == 0 || i >= part.count || big.is_empty() {
            return None;
        }
        let at = (big.len() as u64 * i as u64 / part.count as u64) as usize;
        Some(big.value(at).as_bytes())
    };
    Range {
        lo: cut(part.index),
        hi: cut(part.index + 1),
    }
}

/// A range of values in byte order; `None` ends are unbounded.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Range<'a> {
    pub(crate) lo: Option<&'a [u8]>,
    pub(crate) hi: Option<&'a [u8]>,
}

/// The first index of `a` whose value is not below `v` (`a` ascending).
fn lower_bound(a: &StringArray, v: &[u8]) -> usize {
    let (mut lo, mut hi) = (0, a.len());
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if a.value(mid).as_bytes() < v {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

/// A dictionary's next entry in the merge. Ordered by value, mostly by comparing the first
/// eight bytes as an integer: two values that share those and are no longer than eight
/// bytes differ only in length, and only longer ones are compared in full.
#[derive(Clone, Copy)]
struct Head<'a> {
    prefix: u64,
    v: &'a [u8],
    dict: usize,
    at: usize,
}

impl<'a> Head<'a> {
    fn new(v: &'a [u8], dict: usize, at: usize) -> Self {
        let mut b = [0u8; 8];
        let n = v.len().min(8);
        b[..n].copy_from_slice(&v[..n]);
        Head {
            prefix: u64::from_be_bytes(b),
            v,
            dict,
            at,
        }
    }
}

impl Ord for Head<'_> {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.prefix.cmp(&o.prefix).then_with(|| {
            if self.v.len() <= 8 && o.v.len() <= 8 {
                self.v.len().cmp(&o.v.len())
            } else {
                self.v.cmp(o.v)
            }
        })
    }
}

impl PartialOrd for Head<'_> {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

/// Equal values (of any dictionaries); positions do not count.
impl PartialEq for Head<'_> {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o).is_eq()
    }
}

impl Eq for Head<'_> {}

fn out_of_order(seg: usize, at: usize) -> DataFusionError {
    DataFusionError::Execution(format!(
        "segment {seg}'s dictionary of the GROUP BY key is not in ascending order at entry {at}: \
         the segment file is corrupt"
    ))
}

/// Interns the values in `range` of every dictionary of `dicts` into `interner` (a string
/// interner with nothing interned yet) in ascending order, and gives each dictionary's key
/// ids. Checks each dictionary's order over the entries it reads and at the range's ends.
pub(crate) fn intern_sorted(
    interner: &mut KeyInterner,
    dicts: &[&StringArray],
    range: Range<'_>,
    cancel: &Cancel<'_>,
) -> DfResult<Vec<Vec<u32>>> {
    if interner.kind() != KeyKind::Bytes || interner.len() != 0 {
        return Err(DataFusionError::Internal(
            "sorted dictionaries are merged into an empty string interner".into(),
        ));
    }
    let mut ids = Vec::with_capacity(dicts.len());
    let mut heap = BinaryHeap::with_capacity(dicts.len());
    // Per dictionary: the end of its entries in the range.
    let mut ends = Vec::with_capacity(dicts.len());
    let mut bytes = 0usize;
    let mut entries = 0usize;
    for (s, d) in dicts.iter().enumerate() {
        let start = range.lo.map_or(0, |v| lower_bound(d, v));
        let end = range.hi.map_or(d.len(), |v| lower_bound(d, v)).max(start);
        // The neighbours of the range's ends lie outside it (a dictionary out of order may
        // put the range's values elsewhere too, which no part would then own).
        if let Some(lo) = range.lo {
            if (start > 0 && d.value(start - 1).as_bytes() >= lo)
                || (start < d.len() && d.value(start).as_bytes() < lo)
            {
                return Err(out_of_order(s, start));
            }
        }
        if let Some(hi) = range.hi {
            if (end < d.len() && d.value(end).as_bytes() < hi)
                || (end > start && d.value(end - 1).as_bytes() >= hi)
            {
                return Err(out_of_order(s, end));
            }
        }
        let mut of = vec![u32::MAX; key_ids_len(d.len())];
        of[..start].fill(FOREIGN);
        of[end..d.len()].fill(FOREIGN);
        ids.push(of);
        ends.push(end);
        if start < end {
            heap.push(Reverse(Head::new(d.value(start).as_bytes(), s, start)));
            entries += end - start;
            bytes += (d.value_offsets()[end] - d.value_offsets()[start]) as usize;
        }
    }
    // At most every entry is distinct.
    interner.reserve_sorted(entries, bytes);
    let mut last: Option<(Head, u32)> = None;
    let mut done = 0usize;
    while let Some(mut top) = heap.peek_mut() {
        let Reverse(h) = *top;
        let id = match last {
            Some((l, id)) if l == h => id,
            _ => {
                let id = interner.push_sorted(h.v);
                last = Some((h, id));
                id
            }
        };
        let (s, next) = (h.dict, h.at + 1);
        ids[s][h.at] = id;
        if next < ends[s] {
            let n = Head::new(dicts[s].value(next).as_bytes(), s, next);
            if n <= h {
                return Err(out_of_order(s, next));
            }
            *top = Reverse(n);
        } else {
            PeekMut::pop(top);
        }
        done += 1;
        if done.is_multiple_of(65_536) && cancel.stopped() {
            return Err(DataFusionError::Execution("query cancelled".into()));
        }
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;
    use std::sync::atomic::AtomicBool;

    /// A flag no test sets.
    static NEVER: AtomicBool = AtomicBool::new(false);

    fn merge_all(sets: &[BTreeSet<String>], count: u32) -> Vec<(KeyInterner, Vec<Vec<u32>>)> {
        let arrays: Vec<StringArray> = sets
            .iter()
            .map(|s| StringArray::from_iter_values(s.iter()))
            .collect();
        let dicts: Vec<&StringArray> = arrays.iter().collect();
        (0..count)
            .map(|index| {
                let mut interner = KeyInterner::new(KeyKind::Bytes);
                let range = bounds(&dicts, Part { index, count });
                let ids = intern_sorted(&mut interner, &dicts, range, &Cancel::new(&NEVER, None))
                    .unwrap();
                (interner, ids)
            })
            .collect()
    }

    fn value(k: &KeyInterner, id: u32) -> String {
        let v = k.values(&arrow::datatypes::DataType::Utf8).unwrap();
        v.as_any()
            .downcast_ref::<StringArray>()
            .unwrap()
            .value(id as usize)
            .to_string()
    }

    proptest! {
        /// Every entry of every dictionary gets an id in exactly one part, that id's value is
        /// the entry's, and a part's values are distinct and ascending.
        #[test]
        fn parts_own_each_value_once(
            sets in prop::collection::vec(
                prop::collection::btree_set("[a-d]{0,3}", 0..40), 0..5),
            count in 1u32..4,
        ) {
            let parts = merge_all(&sets, count);
            for (s, set) in sets.iter().enumerate() {
                for (i, want) in set.iter().enumerate() {
                    let owners: Vec<(usize, u32)> = parts
                        .iter()
                        .enumerate()
                        .filter(|(_, (_, ids))| ids[s][i] != FOREIGN)
                        .map(|(p, (_, ids))| (p, ids[s][i]))
                        .collect();
                    prop_assert_eq!(owners.len(), 1, "{:?} owned by {:?}", want, owners);
                    let (p, id) = owners[0];
                    prop_assert_eq!(&value(&parts[p].0, id), want);
                }
                // The padding is never an id.
                for (_, ids) in &parts {
                    prop_assert!(ids[s][set.len()..].iter().all(|&x| x == u32::MAX));
                }
            }
            for (k, _) in &parts {
                let v = k.values(&arrow::datatypes::DataType::Utf8).unwrap();
                let v = v.as_any().downcast_ref::<StringArray>().unwrap();
                for i in 1..v.len() {
                    prop_assert!(v.value(i - 1) < v.value(i));
                }
            }
            let total: usize = parts.iter().map(|(k, _)| k.len()).sum();
            let distinct: BTreeSet<&String> = sets.iter().flatten().collect();
            prop_assert_eq!(total, distinct.len());
        }
    }

    proptest! {
        /// Heads order as their values do in byte order, and are equal exactly when the
        /// values are.
        #[test]
        fn heads_order_as_bytes(
            a in prop::collection::vec(prop_oneof![Just(0u8), Just(1u8), Just(b'a'), any::<u8>()], 0..12),
            b in prop::collection::vec(prop_oneof![Just(0u8), Just(1u8), Just(b'a'), any::<u8>()], 0..12),
        ) {
            prop_assert_eq!(Head::new(&a, 0, 0).cmp(&Head::new(&b, 1, 5)), a.cmp(&b));
        }
    }

    #[test]
    fn out_of_order_dictionaries_are_refused() {
        let bad = StringArray::from(vec!["a", "c", "b", "d"]);
        let good = StringArray::from(vec!["b", "e"]);
        for count in 1..3 {
            let failed = (0..count).any(|index| {
                let dicts = [&good, &bad];
                let range = bounds(&dicts, Part { index, count });
                let mut k = KeyInterner::new(KeyKind::Bytes);
                intern_sorted(&mut k, &dicts, range, &Cancel::new(&NEVER, None)).is_err()
            });
            assert!(failed, "{count} parts");
        }
        // Equal neighbours are out of order too (a value would take two entries).
        let dup = StringArray::from(vec!["a", "a"]);
        let mut k = KeyInterner::new(KeyKind::Bytes);
        let all = Range { lo: None, hi: None };
        assert!(intern_sorted(&mut k, &[&dup], all, &Cancel::new(&NEVER, None)).is_err());
    }

    #[test]
    fn a_used_interner_is_refused() {
        let d = StringArray::from(vec!["a"]);
        let mut k = KeyInterner::new(KeyKind::Bytes);
        k.intern_bytes(b"x");
        let all = Range { lo: None, hi: None };
        assert!(intern_sorted(&mut k, &[&d], all, &Cancel::new(&NEVER, None)).is_err());
    }
}
