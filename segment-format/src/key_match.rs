//! Testing a block's decoded keys against a key set, without a branch or a search per row.
//! In: a [`KeySet`] and the key bounds of the column (its dictionary ids, or its values'
//! min and max). Out: a [`KeyMatcher`] that appends the doc ids of the matching rows to a
//! selection vector.
//!
//! A set of one interval is one unsigned comparison per key; a set of several intervals over
//! a key space of at most [`MAX_BITSET_KEYS`] keys is a bit lookup; anything else is a binary
//! search over the intervals. The selection is written branch-free: every row's doc id is
//! stored, and the write position advances only when it matches, so the loop vectorises and
//! does not mispredict on selective filters.

use crate::predicate::{contains, KeySet};

/// The widest key space a bit lookup covers (1 MiB of bits). A join's key set over a
/// fact table's foreign key spans the dimension's whole key range (TPC-H Q17's 2,000 parts
/// of 2M at SF10): a binary search over its intervals per row took 60% of the query, a bit
/// lookup into a table that stays in cache is one load.
pub(crate) const MAX_BITSET_KEYS: i64 = 1 << 23;

#[derive(Debug)]
pub(crate) enum KeyMatcher {
    /// `lo <= k <= lo + span`, as `(k - lo) as u64 <= span`.
    Range {
        lo: i64,
        span: u64,
    },
    /// A bit per key of `base..base + width`; keys outside it are searched in `set` (only a
    /// corrupt block holds one: the bounds come from the segment's statistics).
    Bits {
        base: i64,
        width: u64,
        bits: Vec<u64>,
        set: KeySet,
    },
    Search(KeySet),
}

impl KeyMatcher {
    /// A matcher for `set` (sorted, disjoint, non-empty intervals) over keys in
    /// `kmin..=kmax`.
    pub(crate) fn new(set: &KeySet, kmin: i64, kmax: i64) -> KeyMatcher {
        if let [(a, b)] = set.as_slice() {
            return KeyMatcher::Range {
                lo: *a,
                span: b.wrapping_sub(*a) as u64,
            };
        }
        let clipped: Vec<(i64, i64)> = set
            .iter()
            .filter_map(|&(a, b)| {
                let (a, b) = (a.max(kmin), b.min(kmax));
                (a <= b).then_some((a, b))
            })
            .collect();
        let (Some(first), Some(last)) = (clipped.first(), clipped.last()) else {
            return KeyMatcher::Search(set.clone());
        };
        let base = first.0;
        let width = last.1 as i128 - base as i128 + 1;
        if width > MAX_BITSET_KEYS as i128 {
            return KeyMatcher::Search(set.clone());
        }
        let mut bits = vec![0u64; (width as usize).div_ceil(64)];
        for &(a, b) in &clipped {
            for k in a..=b {
                let d = (k - base) as usize;
                bits[d >> 6] |= 1 << (d & 63);
            }
        }
        KeyMatcher::Bits {
            base,
            width: width as u64,
            bits,
            set: set.clone(),
        }
    }

    /// Whether key `k` is in the set.
    #[inline]
    pub(crate) fn test(&self, k: i64) -> bool {
        match self {
            KeyMatcher::Range { lo, span } => (k.wrapping_sub(*lo) as u64) <= *span,
            KeyMatcher::Bits {
                base,
                width,
                bits,
                set,
            } => bit(bits, *base, *width, k, set),
            KeyMatcher::Search(set) => contains(set, k),
        }
    }

    /// Appends `row(i)` for every `i < n` whose key `key(i)` is in the set, in order.
    #[inline]
    pub(crate) fn select(
        &self,
        n: usize,
        key: impl Fn(usize) -> i64,
        row: impl Fn(usize) -> u32,
        hits: &mut Vec<u32>,
    ) {
        match self {
            KeyMatcher::Range { lo, span } => {
                push_where(n, |i| (key(i).wrapping_sub(*lo) as u64) <= *span, row, hits)
            }
            KeyMatcher::Bits {
                base,
                width,
                bits,
                set,
            } => push_where(n, |i| bit(bits, *base, *width, key(i), set), row, hits),
            KeyMatcher::Search(set) => push_where(n, |i| contains(set, key(i)), row, hits),
        }
    }
}

#[inline(always)]
fn bit(bits: &[u64], base: i64, width: u64, k: i64, set: &KeySet) -> bool {
    let d = k.wrapping_sub(base) as u64;
    match bits.get((d >> 6) as usize) {
        Some(w) if d < width => (w >> (d & 63)) & 1 == 1,
        _ => contains(set, k),
    }
}

/// The branch-free selection loop.
#[inline(always)]
fn push_where(
    n: usize,
    test: impl Fn(usize) -> bool,
    row: impl Fn(usize) -> u32,
    hits: &mut Vec<u32>,
) {
    let base = hits.len();
    hits.resize(base + n, 0);
    let out = &mut hits[base..];
    let mut m = 0;
    // Before row `i`, `m <= i < n`: every write is in bounds.
    for i in 0..n {
        out[m] = row(i);
        m += test(i) as usize;
    }
    hits.truncate(base + m);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::predicate::normalize;
    use proptest::prelude::*;

    fn naive(set: &KeySet, keys: &[i64]) -> Vec<u32> {
        keys.iter()
            .enumerate()
            .filter(|(_, &k)| set.iter().any(|&(a, b)| a <= k && k <= b))
            .map(|(i, _)| i as u32 + 7)
            .collect()
    }

    proptest! {
        #[test]
        fn matches_the_definition(
            raw in proptest::collection::vec((-300i64..300, 0i64..40), 1..6),
            keys in proptest::collection::vec(-400i64..400, 0..300),
            bounds in (-500i64..0, 0i64..500),
            wide in any::<bool>(),
        ) {
            let mut set: KeySet = raw.iter().map(|&(a, w)| (a, a + w)).collect();
            if wide {
                set.push((i64::MAX - 3, i64::MAX));
                set.insert(0, (i64::MIN, i64::MIN + 2));
            }
            let set = normalize(set);
            let m = KeyMatcher::new(&set, bounds.0, bounds.1);
            let mut hits = vec![1, 2];
            m.select(keys.len(), |i| keys[i], |i| i as u32 + 7, &mut hits);
            let mut want = vec![1, 2];
            want.extend(naive(&set, &keys));
            prop_assert_eq!(&hits, &want);
            for &k in &keys {
                prop_assert_eq!(m.test(k), naive(&set, &[k]).len() == 1);
            }
        }
    }

    #[test]
    fn picks_the_cheapest_form() {
        assert!(matches!(
            KeyMatcher::new(&vec![(i64::MIN, i64::MAX)], 0, 9),
            KeyMatcher::Range { .. }
        ));
        assert!(matches!(
            KeyMatcher::new(&vec![(1, 2), (5, 9)], 0, 9),
            KeyMatcher::Bits { .. }
        ));
        assert!(matches!(
            KeyMatcher::new(&vec![(1, 2), (5, 1 << 40)], 0, i64::MAX),
            KeyMatcher::Search(_)
        ));
        // Every key matches, and keys outside the bounds still answer exactly.
        let m = KeyMatcher::new(&vec![(i64::MIN, i64::MAX)], 0, 9);
        let mut hits = Vec::new();
        m.select(3, |i| [i64::MIN, 0, i64::MAX][i], |i| i as u32, &mut hits);
        assert_eq!(hits, [0, 1, 2]);
        let m = KeyMatcher::new(&vec![(1, 2), (50, 60)], 0, 9);
        assert!(m.test(55) && m.test(2) && !m.test(3) && !m.test(-1));
    }
}
