//! Telling a near-unique string column (event ids, UUIDs) from a sample, before interning
//! every row. In: a string column the builder may leave raw. Out: the column's raw-strings
//! statistics (distinct estimate, bounds) when a sample of its rows holds no value twice, else
//! nothing (the builder then interns every row and decides exactly, see
//! `builder::raw_strings_pay`).
//!
//! Interning a column of unique strings only to find it has no repeats was the largest part
//! of the per-row dictionary work of a batch load (one hash-table insert per row into a table
//! as large as the segment). The sample is `n = max(4,096, 4·√rows)` distinct rows at
//! pseudo-random places. For any distance `d`, about `n²/rows ≥ 16` pairs of sampled rows lie
//! `d` apart, so a column where a share `f` of rows repeats a value `d` rows away (runs,
//! a batch loaded twice, repeats scattered anywhere) shows about `16·f` repeats in the sample:
//! at the exact rule's edge (1 row in 8 repeating) that is two, and a column showing none is
//! almost surely over it. A column judged wrongly is stored raw: a larger file, never a
//! different answer. The sample is fixed by the row count, so the same rows still give the
//! same segment.

use std::collections::HashSet;

use arrow::array::{Array, StringArray};

use crate::builder::Encoded;

/// Rows sampled at least.
const MIN_SAMPLE: usize = 4096;

/// Rows sampled from a column of `rows`.
fn sample_size(rows: usize) -> usize {
    MIN_SAMPLE.max(4 * (rows as f64).sqrt() as usize)
}

/// Fixes the sample's places (any constant would do; changing it changes which rows a build
/// samples, not its answers).
const SEED: i64 = 0x5eed_5a3e;

/// The raw-strings encoding of `a` when a sample of its rows holds no value twice; `None` when
/// the column is short (under four times the sample), sparse (under a quarter of the sampled
/// rows hold a value), or the sample shows a repeat.
pub(crate) fn raw_if_sample_unique(a: &StringArray) -> Option<Encoded> {
    let rows = a.len();
    let n = sample_size(rows);
    if rows < 4 * n {
        return None;
    }
    let mut places: Vec<usize> = (0..n as i64)
        .map(|i| (crate::ndv::mix(i ^ SEED) % rows as u64) as usize)
        .collect();
    places.sort_unstable();
    places.dedup();
    let mut seen = HashSet::with_capacity_and_hasher(places.len(), crate::intern::fast_hasher());
    for &row in &places {
        if a.is_valid(row) && !seen.insert(a.value(row)) {
            return None;
        }
    }
    if seen.len() < n / 4 {
        return None;
    }
    let mut min: Option<&str> = None;
    let mut max: Option<&str> = None;
    let distinct = crate::ndv::estimate(
        a.iter()
            .flatten()
            .inspect(|&s| {
                if min.is_none_or(|m| s < m) {
                    min = Some(s);
                }
                if max.is_none_or(|m| s > m) {
                    max = Some(s);
                }
            })
            .map(|s| crate::ndv::bytes_key(s.as_bytes())),
    );
    Some(Encoded::RawStr {
        distinct: distinct as usize,
        min_str: min.map(str::to_string),
        max_str: max.map(str::to_string),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::{dict_strings, Encoded};

    fn column(values: impl Iterator<Item = Option<String>>) -> StringArray {
        values.collect()
    }

    fn is_raw(e: &Option<Encoded>) -> bool {
        matches!(e, Some(Encoded::RawStr { .. }))
    }

    #[test]
    fn unique_ids_are_raw_with_their_bounds_and_an_estimate() {
        let n = 100_000;
        let a =
            column((0..n).map(|i| Some(format!("evt-{:08x}", (i * 2_654_435_761u64) % (1 << 32)))));
        let Some(Encoded::RawStr {
            distinct,
            min_str,
            max_str,
        }) = raw_if_sample_unique(&a)
        else {
            panic!("a unique column must be judged raw");
        };
        let err = (distinct as f64 - n as f64).abs() / n as f64;
        assert!(err < 0.05, "{distinct} for {n}");
        assert_eq!(min_str.as_deref(), a.iter().flatten().min());
        assert_eq!(max_str.as_deref(), a.iter().flatten().max());
        // The exact path decides the same for this column.
        assert!(matches!(dict_strings(&a, true), Encoded::RawStr { .. }));
    }

    #[test]
    fn repeats_send_the_column_to_the_exact_rule() {
        let n = 100_000u64;
        // Each value twice, next to each other (a run).
        let runs = column((0..n).map(|i| Some(format!("v{}", i / 2))));
        assert!(!is_raw(&raw_if_sample_unique(&runs)));
        // Each value twice, half the column apart (a batch loaded twice).
        let halves = column((0..n).map(|i| Some(format!("v{}", i % (n / 2)))));
        assert!(!is_raw(&raw_if_sample_unique(&halves)));
        // One row in four repeats the row 12,345 rows before it.
        let shifted = column((0..n).map(|i| {
            let j = if i >= 12_345 && i % 4 == 0 {
                i - 12_345
            } else {
                i
            };
            Some(format!("u{j}"))
        }));
        assert!(!is_raw(&raw_if_sample_unique(&shifted)));
        // One row in five repeats a value at random places.
        let scattered = column((0..n).map(|i| {
            let r = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
            Some(if r % 5 == 0 {
                format!("v{}", r % 1000)
            } else {
                format!("u{i}")
            })
        }));
        assert!(!is_raw(&raw_if_sample_unique(&scattered)));
        // A low-cardinality column.
        let low = column((0..n).map(|i| Some(format!("c{}", i % 50))));
        assert!(!is_raw(&raw_if_sample_unique(&low)));
    }

    #[test]
    fn short_or_sparse_columns_are_left_to_the_exact_rule() {
        let short = column((0..1000).map(|i| Some(format!("u{i}"))));
        assert!(!is_raw(&raw_if_sample_unique(&short)));
        let sparse = column((0..100_000).map(|i| (i % 100 == 0).then(|| format!("u{i}"))));
        assert!(!is_raw(&raw_if_sample_unique(&sparse)));
        let nulls_between = column((0..100_000).map(|i| (i % 2 == 0).then(|| format!("u{i}"))));
        let Some(Encoded::RawStr { distinct, .. }) = raw_if_sample_unique(&nulls_between) else {
            panic!("half-null unique column");
        };
        assert!((distinct as f64 - 50_000.0).abs() < 2_500.0, "{distinct}");
    }
}
