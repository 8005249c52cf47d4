//! Property tests: build → read round trips for every type and encoding, predicate evaluation
//! against a naive three-valued reference, and corrupted bytes never panicking.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Float64Array, Int32Array, Int64Array, StringArray,
    TimestampMillisecondArray,
};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use proptest::prelude::*;

use crate::builder::{build_segment, BuildOptions};
use crate::like::sql_like;
use crate::predicate::{
    candidate_docs, evaluate, evaluate_with_stats, may_match, scanned_docs, simplify_for,
    simplify_for_blocks, CmpOp, EvalStats, Predicate,
};
use crate::reader::SegmentReader;
use crate::types::{ColumnDef, ColumnType, IndexKind, SegmentSchema, Value};

#[derive(Debug, Clone, PartialEq)]
enum V {
    S(String),
    I(i64),
    F(f64),
    B(bool),
}

const WORDS: &[&str] = &[
    "", "a", "ab", "abc", "b", "ba", "zeta", "Zulu", "x%y", "é", "mid", "m",
];

fn schema() -> SegmentSchema {
    SegmentSchema {
        columns: vec![
            ColumnDef::new("s", ColumnType::String).with_index(IndexKind::Inverted),
            ColumnDef::new("s2", ColumnType::String).with_index(IndexKind::Bloom),
            ColumnDef::new("i", ColumnType::Long).with_index(IndexKind::Range),
            ColumnDef::new("l", ColumnType::Long),
            ColumnDef::new("f", ColumnType::Double).with_index(IndexKind::Range),
            ColumnDef::new("b", ColumnType::Boolean),
            ColumnDef::new("t", ColumnType::Timestamp),
            ColumnDef::new("n", ColumnType::Int).with_index(IndexKind::Sorted),
            // Near-unique, unindexed: usually stored as raw strings (format 6).
            ColumnDef::new("u", ColumnType::String),
        ],
        time_column: Some("t".into()),
        star_trees: Vec::new(),
    }
}

type Row = Vec<Option<V>>;

fn row_strategy() -> impl Strategy<Value = Row> {
    let word = prop::sample::select(WORDS).prop_map(|w| V::S(w.to_string()));
    (
        prop::option::weighted(0.9, word.clone()),
        prop::option::weighted(0.8, word),
        prop::option::weighted(0.9, (-20i64..20).prop_map(V::I)),
        prop::option::weighted(0.9, any::<i64>().prop_map(V::I)),
        prop::option::weighted(
            0.9,
            prop_oneof![
                prop::sample::select(vec![-1.5f64, -0.0, 0.0, 0.5, 2.0, 1e9]).prop_map(V::F),
                (-100.0f64..100.0).prop_map(V::F)
            ],
        ),
        prop::option::weighted(0.9, any::<bool>().prop_map(V::B)),
        prop::option::weighted(
            0.95,
            (1_700_000_000_000i64..1_700_000_100_000).prop_map(V::I),
        ),
        prop::option::weighted(0.95, (0i64..6).prop_map(V::I)),
        prop::option::weighted(
            0.9,
            prop_oneof![
                9 => "[a-z]{3,8}",
                1 => prop::sample::select(WORDS).prop_map(str::to_string),
            ]
            .prop_map(V::S),
        ),
    )
        .prop_map(|(a, b, c, d, e, f, g, h, u)| vec![a, b, c, d, e, f, g, h, u])
}

fn to_batch(rows: &[Row]) -> RecordBatch {
    let col = |i: usize| rows.iter().map(move |r| r[i].clone());
    let strs = |i: usize| -> ArrayRef {
        Arc::new(StringArray::from_iter(col(i).map(|v| match v {
            Some(V::S(s)) => Some(s),
            _ => None,
        })))
    };
    let ints = |i: usize| {
        col(i).map(|v| match v {
            Some(V::I(x)) => Some(x),
            _ => None,
        })
    };
    let arrays: Vec<ArrayRef> = vec![
        strs(0),
        strs(1),
        Arc::new(Int64Array::from_iter(ints(2))),
        Arc::new(Int64Array::from_iter(ints(3))),
        Arc::new(Float64Array::from_iter(col(4).map(|v| match v {
            Some(V::F(x)) => Some(x),
            _ => None,
        }))),
        Arc::new(BooleanArray::from_iter(col(5).map(|v| match v {
            Some(V::B(x)) => Some(x),
            _ => None,
        }))),
        Arc::new(TimestampMillisecondArray::from_iter(ints(6))),
        Arc::new(Int32Array::from_iter(ints(7).map(|v| v.map(|x| x as i32)))),
        strs(8),
    ];
    let schema = Arc::new(arrow::datatypes::Schema::new(
        schema()
            .columns
            .iter()
            .zip(&arrays)
            .map(|(c, a)| arrow::datatypes::Field::new(&c.name, a.data_type().clone(), true))
            .collect::<Vec<_>>(),
    ));
    RecordBatch::try_new(schema, arrays).unwrap()
}

/// `b` with its string columns as dictionary arrays: the distinct values in an order `seed`
/// shuffles, each present twice (rows pick either copy), plus a value no row uses.
fn as_dictionaries(b: &RecordBatch, seed: u64) -> RecordBatch {
    use arrow::array::{AsArray, DictionaryArray};
    use arrow::datatypes::Int32Type;
    let columns: Vec<ArrayRef> = b
        .columns()
        .iter()
        .map(|c| {
            let Some(s) = c.as_string_opt::<i32>() else {
                return c.clone();
            };
            let mut values: Vec<&str> = s.iter().flatten().collect();
            values.sort_unstable();
            values.dedup();
            values.sort_by_key(|v| {
                v.bytes()
                    .fold(seed, |h, x| h.rotate_left(5) ^ u64::from(x))
                    .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            });
            let n = values.len() as i32;
            let mut dictionary = values.clone();
            dictionary.extend(values.iter().copied());
            dictionary.push("never-used");
            let keys: arrow::array::Int32Array = s
                .iter()
                .enumerate()
                .map(|(row, v)| {
                    let at = values.iter().position(|x| Some(*x) == v)? as i32;
                    Some(if (row as u64 ^ seed).is_multiple_of(2) {
                        at
                    } else {
                        at + n
                    })
                })
                .collect();
            let d = DictionaryArray::<Int32Type>::try_new(
                keys,
                Arc::new(StringArray::from(dictionary)),
            )
            .unwrap();
            Arc::new(d) as ArrayRef
        })
        .collect();
    let schema = Schema::new(
        b.schema()
            .fields()
            .iter()
            .zip(&columns)
            .map(|(f, c)| Field::new(f.name(), c.data_type().clone(), true))
            .collect::<Vec<_>>(),
    );
    RecordBatch::try_new(Arc::new(schema), columns).unwrap()
}

fn opts() -> BuildOptions {
    BuildOptions {
        block_rows: 16,
        range_buckets: 4,
        max_numeric_dictionary: 8,
        ..BuildOptions::default()
    }
}

/// Rows in the order the builder stores them: stable sort by the sorted column, nulls last.
fn stored_order(rows: &[Row]) -> Vec<Row> {
    let mut r = rows.to_vec();
    r.sort_by_key(|row| match &row[7] {
        Some(V::I(x)) => (0, *x),
        _ => (1, 0),
    });
    r
}

fn value_of(reader_col: &ArrayRef, i: usize) -> Option<V> {
    if reader_col.is_null(i) {
        return None;
    }
    let a = reader_col.as_ref();
    if let Some(d) = a
        .as_any()
        .downcast_ref::<arrow::array::DictionaryArray<arrow::datatypes::Int32Type>>()
    {
        let vals = d.values().as_any().downcast_ref::<StringArray>().unwrap();
        return Some(V::S(vals.value(d.keys().value(i) as usize).to_string()));
    }
    if let Some(x) = a.as_any().downcast_ref::<Int64Array>() {
        return Some(V::I(x.value(i)));
    }
    if let Some(x) = a.as_any().downcast_ref::<Int32Array>() {
        return Some(V::I(x.value(i) as i64));
    }
    if let Some(x) = a.as_any().downcast_ref::<TimestampMillisecondArray>() {
        return Some(V::I(x.value(i)));
    }
    if let Some(x) = a.as_any().downcast_ref::<Float64Array>() {
        return Some(V::F(x.value(i)));
    }
    if let Some(x) = a.as_any().downcast_ref::<BooleanArray>() {
        return Some(V::B(x.value(i)));
    }
    panic!("unexpected array type {}", a.data_type())
}

fn cmp_v(a: &V, b: &Value) -> Option<std::cmp::Ordering> {
    match (a, b) {
        (V::S(x), Value::Str(y)) => Some(x.as_str().cmp(y.as_str())),
        (V::I(x), Value::Int(y)) => Some(x.cmp(y)),
        (V::F(x), Value::Float(y)) => Some(x.total_cmp(y)),
        (V::B(x), Value::Bool(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

/// Naive three-valued evaluation: None is UNKNOWN.
fn reference(p: &Predicate, row: &Row) -> Option<bool> {
    let col = |c: &str| row[schema().column_index(c).unwrap()].clone();
    match p {
        Predicate::Const(b) => Some(*b),
        Predicate::Compare { column, op, value } => {
            let v = col(column)?;
            let o = cmp_v(&v, value)?;
            Some(match op {
                CmpOp::Eq => o.is_eq(),
                CmpOp::NotEq => o.is_ne(),
                CmpOp::Lt => o.is_lt(),
                CmpOp::LtEq => o.is_le(),
                CmpOp::Gt => o.is_gt(),
                CmpOp::GtEq => o.is_ge(),
            })
        }
        Predicate::Between { column, low, high } => {
            let v = col(column)?;
            Some(cmp_v(&v, low)?.is_ge() && cmp_v(&v, high)?.is_le())
        }
        Predicate::InList {
            column,
            values,
            negated,
        } => {
            let v = col(column)?;
            let found = values
                .iter()
                .any(|x| cmp_v(&v, x).is_some_and(|o| o.is_eq()));
            Some(found != *negated)
        }
        Predicate::IsNull { column, negated } => Some(col(column).is_none() != *negated),
        Predicate::Like {
            column,
            pattern,
            negated,
            case_insensitive,
        } => match col(column)? {
            V::S(s) => Some(sql_like(pattern, &s, *case_insensitive) != *negated),
            _ => None,
        },
        // Checked against its own reference in `text::tests`.
        Predicate::TextMatch { .. } | Predicate::JsonMatch { .. } => {
            unreachable!("not generated here")
        }
        Predicate::And(v) => {
            let r: Vec<Option<bool>> = v.iter().map(|p| reference(p, row)).collect();
            if r.contains(&Some(false)) {
                Some(false)
            } else if r.contains(&None) {
                None
            } else {
                Some(true)
            }
        }
        Predicate::Or(v) => {
            let r: Vec<Option<bool>> = v.iter().map(|p| reference(p, row)).collect();
            if r.contains(&Some(true)) {
                Some(true)
            } else if r.contains(&None) {
                None
            } else {
                Some(false)
            }
        }
        Predicate::Not(p) => reference(p, row).map(|b| !b),
    }
}

fn literal_for(col: &str) -> BoxedStrategy<Value> {
    match col {
        "s" | "s2" | "u" => prop_oneof![
            prop::sample::select(WORDS).prop_map(|w| Value::Str(w.to_string())),
            "[a-z]{0,3}".prop_map(Value::Str)
        ]
        .boxed(),
        "i" | "n" => (-25i64..25).prop_map(Value::Int).boxed(),
        "l" => prop_oneof![any::<i64>(), Just(i64::MIN), Just(i64::MAX)]
            .prop_map(Value::Int)
            .boxed(),
        "t" => (1_699_999_999_000i64..1_700_000_101_000)
            .prop_map(Value::Int)
            .boxed(),
        "f" => prop_oneof![
            prop::sample::select(vec![-1.5f64, -0.0, 0.0, 0.5, 2.0, 1e9]),
            -120.0f64..120.0
        ]
        .prop_map(Value::Float)
        .boxed(),
        "b" => any::<bool>().prop_map(Value::Bool).boxed(),
        _ => unreachable!(),
    }
}

fn leaf() -> impl Strategy<Value = Predicate> {
    let cols = vec!["s", "s2", "i", "l", "f", "b", "t", "n", "u"];
    prop::sample::select(cols).prop_flat_map(|c| {
        let ops = prop::sample::select(vec![
            CmpOp::Eq,
            CmpOp::NotEq,
            CmpOp::Lt,
            CmpOp::LtEq,
            CmpOp::Gt,
            CmpOp::GtEq,
        ]);
        let name = c.to_string();
        let mut options: Vec<BoxedStrategy<Predicate>> = vec![
            (ops, literal_for(c))
                .prop_map({
                    let name = name.clone();
                    move |(op, value)| Predicate::Compare {
                        column: name.clone(),
                        op,
                        value,
                    }
                })
                .boxed(),
            (literal_for(c), literal_for(c))
                .prop_map({
                    let name = name.clone();
                    move |(low, high)| Predicate::Between {
                        column: name.clone(),
                        low,
                        high,
                    }
                })
                .boxed(),
            (prop::collection::vec(literal_for(c), 0..4), any::<bool>())
                .prop_map({
                    let name = name.clone();
                    move |(values, negated)| Predicate::InList {
                        column: name.clone(),
                        values,
                        negated,
                    }
                })
                .boxed(),
            any::<bool>()
                .prop_map({
                    let name = name.clone();
                    move |negated| Predicate::IsNull {
                        column: name.clone(),
                        negated,
                    }
                })
                .boxed(),
        ];
        if c == "s" || c == "s2" || c == "u" {
            options.push(
                ("[abz%_]{0,4}", any::<bool>(), any::<bool>())
                    .prop_map({
                        let name = name.clone();
                        move |(pattern, negated, ci)| Predicate::Like {
                            column: name.clone(),
                            pattern,
                            negated,
                            case_insensitive: ci,
                        }
                    })
                    .boxed(),
            );
        }
        prop::strategy::Union::new(options)
    })
}

fn predicate() -> impl Strategy<Value = Predicate> {
    leaf().prop_recursive(3, 12, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 1..4).prop_map(Predicate::And),
            prop::collection::vec(inner.clone(), 1..4).prop_map(Predicate::Or),
            inner.prop_map(|p| Predicate::Not(Box::new(p))),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Counts per value from the indexes (`s`'s inverted index, `n`'s sorted runs when it is
    /// dictionary-encoded) equal the ids the rows' blocks hold, over every doc and a subset.
    #[test]
    fn value_counts_match_the_rows(
        rows in prop::collection::vec(row_strategy(), 0..120),
        pick in prop::collection::vec(any::<bool>(), 120),
    ) {
        let bytes = build_segment(&schema(), &[to_batch(&rows)], &opts()).unwrap();
        let r = SegmentReader::open(Bytes::from(bytes)).unwrap();
        let all: Vec<u32> = (0..rows.len() as u32).collect();
        let some: roaring::RoaringBitmap = all.iter().copied().filter(|&d| pick[d as usize]).collect();
        for name in ["s", "n", "s2"] {
            let c = r.column_index(name).unwrap();
            let Some(ids) = r.read_ids(c, &all).unwrap() else {
                prop_assert!(r.value_counts(c, None).unwrap().is_none());
                continue;
            };
            let nulls = r.nulls(c).unwrap();
            let cardinality = r.dictionary(c).unwrap().map_or(0, |d| d.len());
            let m = r.column_meta(c);
            let indexed = m.sorted_runs.is_some() || m.inverted.is_some();
            for docs in [None, Some(&some)] {
                let got = r.value_counts(c, docs).unwrap();
                prop_assert_eq!(got.is_some(), indexed, "{} has an index", name);
                let Some(got) = got else { continue };
                let mut want = vec![0u64; cardinality];
                for (d, &id) in ids.iter().enumerate() {
                    let d = d as u32;
                    if !nulls.contains(d) && docs.is_none_or(|s| s.contains(d)) {
                        want[id as usize] += 1;
                    }
                }
                prop_assert_eq!(&got, &want, "{} over {:?}", name, docs);
            }
        }
    }

    #[test]
    fn round_trip_every_column(rows in prop::collection::vec(row_strategy(), 0..150)) {
        let bytes = build_segment(&schema(), &[to_batch(&rows)], &opts()).unwrap();
        let r = SegmentReader::open(Bytes::from(bytes)).unwrap();
        prop_assert_eq!(r.row_count() as usize, rows.len());
        let expect = stored_order(&rows);
        let docs: Vec<u32> = (0..rows.len() as u32).collect();
        for c in 0..9 {
            let arr = r.read_column(c, &docs).unwrap();
            for (i, row) in expect.iter().enumerate() {
                let got = value_of(&arr, i);
                let want = match (&row[c], c) {
                    (Some(V::F(x)), _) => Some(V::F(*x)),
                    (v, _) => v.clone(),
                };
                match (&got, &want) {
                    (Some(V::F(a)), Some(V::F(b))) => prop_assert_eq!(a.to_bits(), b.to_bits()),
                    _ => prop_assert_eq!(&got, &want, "column {} doc {}", c, i),
                }
            }
        }
        // A sparse subset reads the same values.
        let subset: Vec<u32> = docs.iter().copied().filter(|d| d % 3 == 1).collect();
        for c in [0, 8] {
            let arr = r.read_column(c, &subset).unwrap();
            for (j, d) in subset.iter().enumerate() {
                prop_assert_eq!(value_of(&arr, j), expect[*d as usize][c].clone());
            }
        }
    }

    /// String columns given as dictionary arrays (as the Parquet reader gives dictionary
    /// pages: values in any order, values no row uses, the same value twice, batches with
    /// dictionaries of their own, sliced) build the same bytes as plain strings.
    #[test]
    fn dictionary_inputs_build_the_same_segment(
        rows in prop::collection::vec(row_strategy(), 0..150),
        cuts in prop::collection::vec(0usize..150, 0..3),
        seed in any::<u64>(),
        shared in any::<bool>(),
    ) {
        let plain = to_batch(&rows);
        let mut bounds: Vec<usize> = cuts.iter().map(|c| c % (rows.len() + 1)).collect();
        bounds.extend([0, rows.len()]);
        bounds.sort_unstable();
        let pieces: Vec<RecordBatch> = bounds
            .windows(2)
            .map(|w| plain.slice(w[0], w[1] - w[0]))
            .collect();
        // One dictionary over every row (sliced per piece), or one per piece.
        let whole = (shared && !rows.is_empty()).then(|| as_dictionaries(&plain, seed));
        let dicts: Vec<RecordBatch> = pieces
            .iter()
            .zip(bounds.windows(2))
            .map(|(p, w)| match &whole {
                Some(d) => d.slice(w[0], w[1] - w[0]),
                None => as_dictionaries(p, seed),
            })
            .collect();
        let want = build_segment(&schema(), &pieces, &opts()).unwrap();
        let got = build_segment(&schema(), &dicts, &opts()).unwrap();
        prop_assert!(want == got, "dictionary inputs built other bytes");
        // A mix of both forms is read as plain strings.
        if dicts.len() > 1 {
            let mut mixed = dicts.clone();
            mixed[0] = pieces[0].clone();
            prop_assert!(build_segment(&schema(), &mixed, &opts()).unwrap() == want);
        }
    }

    #[test]
    fn predicates_match_reference(
        rows in prop::collection::vec(row_strategy(), 0..120),
        preds in prop::collection::vec(predicate(), 1..6),
    ) {
        let bytes = build_segment(&schema(), &[to_batch(&rows)], &opts()).unwrap();
        let r = SegmentReader::open(Bytes::from(bytes)).unwrap();
        let stored = stored_order(&rows);
        for p in &preds {
            let mut stats = EvalStats::default();
            let got: Vec<u32> = evaluate_with_stats(&r, p, &mut stats).unwrap().iter().collect();
            let want: Vec<u32> = stored
                .iter()
                .enumerate()
                .filter(|(_, row)| reference(p, row) == Some(true))
                .map(|(i, _)| i as u32)
                .collect();
            prop_assert_eq!(&got, &want, "predicate {:?}", p);
            if !want.is_empty() {
                prop_assert!(may_match(&r, p).unwrap(), "pruned a matching segment: {:?}", p);
            }
            let bound = candidate_docs(&r, p);
            prop_assert!(bound >= want.len() as u64, "{:?}: {} candidate docs, {} match", p, bound, want.len());
            prop_assert!(bound <= r.row_count() as u64);
            // `scanned_docs` bounds the docs of the blocks the evaluation decoded. Each leaf
            // decodes a block at most once, so at most one block per leaf is the segment's
            // last, shorter one; every other holds 16 docs.
            let decoded = stats.blocks_scanned;
            let rows = r.row_count() as u64;
            let last = rows - rows.saturating_sub(1) / 16 * 16;
            let short = decoded.min(leaves(p));
            let least = (decoded - short) * 16 + short * last;
            let scanned = scanned_docs(&r, p);
            prop_assert!(scanned >= least, "{:?}: {} blocks decoded, {} docs sized", p, decoded, scanned);
            // Read against this segment's bounds, it selects the same docs.
            let simple = simplify_for(&r, p);
            let got: Vec<u32> = evaluate(&r, &simple).unwrap().iter().collect();
            prop_assert_eq!(&got, &want, "{:?} simplified to {:?}", p, simple);
            same_docs_in_block_ranges(&r, p)?;
        }
    }

    #[test]
    fn null_positions_match_probing(
        nulls in prop::collection::btree_set(0u32..3000, 0..300),
        docs in prop::collection::btree_set(0u32..3000, 0..600),
        start in 0u32..2000,
        len in 0u32..1000,
        contiguous in any::<bool>(),
    ) {
        let bm: roaring::RoaringBitmap = nulls.iter().copied().collect();
        let docs: Vec<u32> = if contiguous {
            (start..start + len).collect()
        } else {
            docs.into_iter().collect()
        };
        let want: Vec<usize> = docs
            .iter()
            .enumerate()
            .filter(|(_, d)| bm.contains(**d))
            .map(|(i, _)| i)
            .collect();
        prop_assert_eq!(crate::reader::null_positions(&bm, &docs), want);
    }

    #[test]
    fn validity_matches_probing(
        runs in prop::collection::vec((0u32..3000, 0u32..200), 0..20),
        docs in prop::collection::btree_set(0u32..3000, 0..600),
        start in 0u32..2000,
        len in 0u32..1001,
        contiguous in any::<bool>(),
        // Shifted to end at u32::MAX: a run of nulls up to the last id.
        high in any::<bool>(),
    ) {
        let shift = if high { u32::MAX - 3000 } else { 0 };
        let bm: roaring::RoaringBitmap = runs
            .iter()
            .flat_map(|&(s, l)| s..(s + l).min(3001))
            .map(|d| d + shift)
            .collect();
        let docs: Vec<u32> = if contiguous {
            (start..start + len).map(|d| d + shift).collect()
        } else {
            docs.into_iter().map(|d| d + shift).collect()
        };
        let want: Vec<bool> = docs.iter().map(|d| !bm.contains(*d)).collect();
        let got = crate::reader::validity(&bm, &docs);
        match got {
            None => prop_assert!(want.iter().all(|v| *v), "None with a null doc"),
            Some(nb) => {
                prop_assert_eq!(nb.iter().collect::<Vec<bool>>(), want.clone());
                prop_assert!(want.iter().any(|v| !*v), "a validity without nulls");
            }
        }
    }

    #[test]
    fn corrupt_bytes_never_panic(
        rows in prop::collection::vec(row_strategy(), 1..60),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut bytes = build_segment(&schema(), &[to_batch(&rows)], &opts()).unwrap();
        let original = bytes.clone();
        if truncate {
            let n = cut.index(bytes.len());
            bytes.truncate(n);
        } else {
            for (at, x) in flips {
                let i = at.index(bytes.len());
                bytes[i] ^= x.max(1);
            }
        }
        // Every byte is under a checksum: a changed file fails to open or to verify.
        if bytes != original {
            let checked = SegmentReader::open(Bytes::from(bytes.clone())).and_then(|r| r.verify());
            prop_assert!(checked.is_err(), "damaged segment passed its checks");
        }
        exercise(bytes);
    }

    /// Bytes changed behind the checksums (recomputed over the changed bytes, as the fuzz
    /// target does): the decoders themselves must refuse what they cannot read.
    #[test]
    fn corrupt_bytes_past_the_checksums_never_panic(
        rows in prop::collection::vec(row_strategy(), 1..60),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        compress in any::<bool>(),
    ) {
        let o = BuildOptions { compress, ..opts() };
        let bytes = build_segment(&schema(), &[to_batch(&rows)], &o).unwrap();
        let mut unpacked = crate::fuzzing::unpack(&bytes).unwrap();
        for (at, x) in flips {
            let i = at.index(unpacked.len());
            unpacked[i] ^= x.max(1);
        }
        exercise(crate::fuzzing::pack(&unpacked));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Without nulls, leaves the footer's bounds decide are folded away; what is left selects
    /// the same docs (and a segment a range covers whole reads it as no condition).
    #[test]
    fn simplified_predicates_select_the_same_docs_without_nulls(
        rows in prop::collection::vec(row_strategy(), 1..120),
        preds in prop::collection::vec(predicate(), 1..6),
    ) {
        let fill = [
            V::S("m".into()), V::S("a".into()), V::I(0), V::I(0), V::F(0.0), V::B(false),
            V::I(1_700_000_050_000), V::I(3), V::S("zz".into()),
        ];
        let rows: Vec<Row> = rows
            .into_iter()
            .map(|r| r.into_iter().zip(&fill).map(|(v, f)| v.or_else(|| Some(f.clone()))).collect())
            .collect();
        let bytes = build_segment(&schema(), &[to_batch(&rows)], &opts()).unwrap();
        let r = SegmentReader::open(Bytes::from(bytes)).unwrap();
        for p in &preds {
            let want: Vec<u32> = evaluate(&r, p).unwrap().iter().collect();
            let simple = simplify_for(&r, p);
            let got: Vec<u32> = evaluate(&r, &simple).unwrap().iter().collect();
            prop_assert_eq!(&got, &want, "{:?} simplified to {:?}", p, simple);
            if simple == Predicate::Const(true) {
                prop_assert_eq!(want.len(), rows.len());
            }
            same_docs_in_block_ranges(&r, p)?;
        }
    }
}

/// For every range of blocks, `p` read against those blocks' zone maps selects the same of
/// their docs as `p`.
fn same_docs_in_block_ranges(r: &SegmentReader, p: &Predicate) -> Result<(), TestCaseError> {
    let all = evaluate(r, p).unwrap();
    let blocks = (r.row_count() as usize).div_ceil(r.block_rows());
    for from in 0..blocks {
        for to in from + 1..=blocks.min(from + 3) {
            let docs = (from * r.block_rows()) as u32
                ..(from * r.block_rows()) as u32
                    + (from..to).map(|b| r.block_len(b) as u32).sum::<u32>();
            let simple = simplify_for_blocks(r, p, from..to);
            let got: Vec<u32> = evaluate(r, &simple)
                .unwrap()
                .iter()
                .filter(|d| docs.contains(d))
                .collect();
            let want: Vec<u32> = all.iter().filter(|d| docs.contains(d)).collect();
            prop_assert_eq!(
                got,
                want,
                "blocks {}..{}: {:?} simplified to {:?}",
                from,
                to,
                p,
                simple
            );
        }
    }
    Ok(())
}

#[test]
fn a_range_covering_a_segment_simplifies_away() {
    let rows: Vec<Row> = (0..40i64)
        .map(|i| {
            vec![
                Some(V::S("a".into())),
                None,
                Some(V::I(i)),
                None,
                None,
                None,
                Some(V::I(1_700_000_000_000 + i * 1000)),
                Some(V::I(1)),
                None,
            ]
        })
        .collect();
    let bytes = build_segment(&schema(), &[to_batch(&rows)], &opts()).unwrap();
    let r = SegmentReader::open(Bytes::from(bytes)).unwrap();
    let t = |lo: i64, hi: i64| Predicate::Between {
        column: "t".into(),
        low: Value::Int(lo),
        high: Value::Int(hi),
    };
    let s_eq = Predicate::Compare {
        column: "s".into(),
        op: CmpOp::Eq,
        value: Value::Str("a".into()),
    };
    let i_lt = Predicate::Compare {
        column: "i".into(),
        op: CmpOp::Lt,
        value: Value::Int(10),
    };
    // Covered whole: no condition.
    let cover = t(1_699_999_000_000, 1_700_001_000_000);
    assert_eq!(simplify_for(&r, &cover), Predicate::Const(true));
    assert_eq!(
        simplify_for(&r, &Predicate::And(vec![cover.clone(), s_eq.clone()])),
        Predicate::Const(true)
    );
    // Cut by the range: kept, with what else the AND says.
    let part = t(1_700_000_010_000, 1_700_001_000_000);
    assert_eq!(
        simplify_for(
            &r,
            &Predicate::And(vec![cover.clone(), part.clone(), i_lt.clone()])
        ),
        Predicate::And(vec![part.clone(), i_lt.clone()])
    );
    // Outside: nothing, and an OR drops it.
    let before = t(1_600_000_000_000, 1_600_000_001_000);
    assert_eq!(simplify_for(&r, &before), Predicate::Const(false));
    assert_eq!(
        simplify_for(&r, &Predicate::Or(vec![before, i_lt.clone()])),
        i_lt
    );
    // Blocks of 16 rows (16 s each): the range cuts block 0 and covers blocks 1 and 2.
    assert_eq!(simplify_for_blocks(&r, &part, 1..3), Predicate::Const(true));
    assert_eq!(simplify_for_blocks(&r, &part, 0..1), part);
    assert_eq!(
        simplify_for_blocks(&r, &t(1_600_000_000_000, 1_700_000_015_000), 1..3),
        Predicate::Const(false)
    );
    // A column with nulls is never taken as covered; NOT is left alone.
    let s2 = Predicate::IsNull {
        column: "s2".into(),
        negated: false,
    };
    assert_eq!(simplify_for(&r, &s2), s2);
    let not = Predicate::Not(Box::new(cover));
    assert_eq!(simplify_for(&r, &not), not);
}

pub(crate) use crate::fuzzing::exercise;

#[test]
fn empty_segment_is_valid() {
    let bytes = build_segment(&schema(), &[to_batch(&[])], &opts()).unwrap();
    let r = SegmentReader::open(Bytes::from(bytes)).unwrap();
    assert_eq!(r.row_count(), 0);
    let p = Predicate::Compare {
        column: "s".into(),
        op: CmpOp::Eq,
        value: Value::Str("a".into()),
    };
    assert!(evaluate(&r, &p).unwrap().is_empty());
    assert!(!may_match(&r, &p).unwrap());
}

#[test]
fn sorted_column_is_sorted_and_has_runs() {
    let rows: Vec<Row> = (0..100)
        .map(|i| {
            let mut r = vec![None; 9];
            r[7] = Some(V::I((i * 7 % 5) as i64));
            r
        })
        .collect();
    let bytes = build_segment(&schema(), &[to_batch(&rows)], &opts()).unwrap();
    let r = SegmentReader::open(Bytes::from(bytes)).unwrap();
    assert_eq!(r.footer().sorted_by.as_deref(), Some("n"));
    assert!(r.column_meta(7).sorted_runs.is_some());
    let p = Predicate::Compare {
        column: "n".into(),
        op: CmpOp::Eq,
        value: Value::Int(3),
    };
    let got = evaluate(&r, &p).unwrap();
    assert_eq!(got.len(), 20);
    assert_eq!(got.min(), Some(60));
}

/// 100 rows, `n` and `l` numbering them 0..100 (stored in that order, blocks of 16), `s` a
/// word.
fn numbered_segment() -> SegmentReader {
    let rows: Vec<Row> = (0..100)
        .map(|i| {
            let mut r = vec![None; 9];
            r[0] = Some(V::S(WORDS[i % WORDS.len()].to_string()));
            r[3] = Some(V::I(i as i64));
            r[7] = Some(V::I(i as i64));
            r
        })
        .collect();
    let bytes = build_segment(&schema(), &[to_batch(&rows)], &opts()).unwrap();
    SegmentReader::open(Bytes::from(bytes)).unwrap()
}

fn compare(column: &str, op: CmpOp, v: i64) -> Predicate {
    Predicate::Compare {
        column: column.into(),
        op,
        value: Value::Int(v),
    }
}

#[test]
fn candidate_docs_count_the_blocks_zone_maps_admit() {
    let r = numbered_segment();
    let n = |op, v| compare("n", op, v);
    // Blocks of 16: 80..96 and the last, 96..100.
    assert_eq!(candidate_docs(&r, &n(CmpOp::GtEq, 90)), 20);
    assert_eq!(candidate_docs(&r, &n(CmpOp::Lt, 0)), 0);
    // An AND counts its smallest child (a bound, not the blocks both admit).
    let both = Predicate::And(vec![n(CmpOp::GtEq, 90), n(CmpOp::Lt, 10)]);
    assert_eq!(candidate_docs(&r, &both), 16);
    let either = Predicate::Or(vec![n(CmpOp::GtEq, 90), n(CmpOp::Lt, 10)]);
    assert_eq!(candidate_docs(&r, &either), 36);
    let everything = Predicate::Or(vec![n(CmpOp::GtEq, 0), n(CmpOp::Lt, 100)]);
    assert_eq!(candidate_docs(&r, &everything), 100);
    // What zone maps cannot judge counts every doc.
    let like = Predicate::Like {
        column: "s".into(),
        pattern: "%a%".into(),
        negated: false,
        case_insensitive: false,
    };
    assert_eq!(candidate_docs(&r, &like), 100);
    assert_eq!(
        candidate_docs(&r, &Predicate::Not(Box::new(n(CmpOp::Lt, 0)))),
        100
    );
}

/// Leaves of `p`: the most passes its evaluation makes over a segment's blocks.
fn leaves(p: &Predicate) -> u64 {
    match p {
        Predicate::And(v) | Predicate::Or(v) => v.iter().map(leaves).sum(),
        Predicate::Not(p) => leaves(p),
        Predicate::Const(_) => 0,
        _ => 1,
    }
}

#[test]
fn scanned_docs_count_the_blocks_a_range_cuts() {
    let r = numbered_segment();
    // `l` has zone maps and no index; blocks of 16.
    let l = |op, v| compare("l", op, v);
    // 80..96 is cut at 90 and decoded; 96..100 is covered whole and counted unread.
    assert_eq!(scanned_docs(&r, &l(CmpOp::GtEq, 90)), 16);
    assert_eq!(candidate_docs(&r, &l(CmpOp::GtEq, 90)), 20);
    // A range on block edges decodes nothing.
    assert_eq!(scanned_docs(&r, &l(CmpOp::GtEq, 80)), 0);
    assert_eq!(scanned_docs(&r, &l(CmpOp::Lt, 0)), 0);
    assert_eq!(scanned_docs(&r, &l(CmpOp::GtEq, 0)), 0);
    // Each child of an AND or OR is evaluated: their scans add up.
    let both = Predicate::And(vec![l(CmpOp::GtEq, 90), l(CmpOp::Lt, 10)]);
    assert_eq!(scanned_docs(&r, &both), 32);
    let either = Predicate::Or(vec![l(CmpOp::GtEq, 90), l(CmpOp::Lt, 10)]);
    assert_eq!(scanned_docs(&r, &either), 32);
    assert_eq!(
        scanned_docs(&r, &Predicate::Not(Box::new(l(CmpOp::GtEq, 90)))),
        16
    );
    assert_eq!(scanned_docs(&r, &Predicate::Const(true)), 0);
    // What zone maps cannot judge counts every doc.
    let like = Predicate::Like {
        column: "s".into(),
        pattern: "%a%".into(),
        negated: false,
        case_insensitive: false,
    };
    assert_eq!(scanned_docs(&r, &like), 100);
    // What the evaluator decodes agrees.
    for (p, decoded) in [(l(CmpOp::GtEq, 90), 1), (l(CmpOp::GtEq, 80), 0)] {
        let mut stats = EvalStats::default();
        evaluate_with_stats(&r, &p, &mut stats).unwrap();
        assert_eq!(stats.blocks_scanned, decoded, "{p:?}");
    }
}

#[test]
fn type_mismatch_is_an_error() {
    let bytes = build_segment(&schema(), &[to_batch(&[])], &opts()).unwrap();
    let r = SegmentReader::open(Bytes::from(bytes)).unwrap();
    let p = Predicate::Compare {
        column: "s".into(),
        op: CmpOp::Eq,
        value: Value::Int(1),
    };
    // An empty dictionary answers nothing; a populated one must reject the literal.
    let _ = evaluate(&r, &p);
    let rows = vec![vec![
        Some(V::S("a".into())),
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
    ]];
    let bytes = build_segment(&schema(), &[to_batch(&rows)], &opts()).unwrap();
    let r = SegmentReader::open(Bytes::from(bytes)).unwrap();
    assert!(evaluate(&r, &p).is_err());
    let p = Predicate::Compare {
        column: "nope".into(),
        op: CmpOp::Eq,
        value: Value::Int(1),
    };
    assert!(evaluate(&r, &p).is_err());
}

#[test]
fn large_string_dictionaries_are_compacted_per_batch() {
    let schema = SegmentSchema {
        // Distinct values: the inverted index keeps the column dictionary-encoded.
        columns: vec![ColumnDef::new("k", ColumnType::String).with_index(IndexKind::Inverted)],
        time_column: None,
        star_trees: Vec::new(),
    };
    let n = 20_000usize;
    let vals: Vec<Option<String>> = (0..n)
        .map(|i| (i % 7 != 0).then(|| format!("key-{:05}", (i * 7919) % n)))
        .collect();
    let arr: ArrayRef = Arc::new(StringArray::from_iter(vals.clone()));
    let batch = RecordBatch::try_new(
        Arc::new(arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new("k", arrow::datatypes::DataType::Utf8, true),
        ])),
        vec![arr],
    )
    .unwrap();
    let r = SegmentReader::open(Bytes::from(
        build_segment(&schema, &[batch], &BuildOptions::default()).unwrap(),
    ))
    .unwrap();
    for docs in [
        (0..n as u32).step_by(13).collect::<Vec<u32>>(),
        (5000..5100).collect(),
        vec![19_999],
        vec![],
    ] {
        let a = r.read_column(0, &docs).unwrap();
        let d = a
            .as_any()
            .downcast_ref::<arrow::array::DictionaryArray<arrow::datatypes::Int32Type>>()
            .unwrap();
        assert!(
            d.values().len() <= docs.len().max(1),
            "dictionary compacted to used values"
        );
        for (j, doc) in docs.iter().enumerate() {
            let want = vals[*doc as usize].clone().map(V::S);
            assert_eq!(value_of(&a, j), want, "doc {doc}");
        }
    }
}

#[test]
fn near_unique_strings_are_stored_raw_and_answer_filters() {
    let rows: Vec<Row> = (0..200)
        .map(|i| {
            let mut r = vec![None; 9];
            r[7] = Some(V::I(0));
            r[8] = (i % 10 != 3).then(|| V::S(format!("id-{:04}", (i * 37) % 200)));
            r
        })
        .collect();
    let bytes = build_segment(&schema(), &[to_batch(&rows)], &opts()).unwrap();
    let r = SegmentReader::open(Bytes::from(bytes)).unwrap();
    assert_eq!(
        r.column_meta(8).encoding,
        crate::layout::Encoding::RawStrings
    );
    assert_eq!(r.column_meta(8).stats.distinct, Some(180));
    let cmp = |op, v: &str| Predicate::Compare {
        column: "u".into(),
        op,
        value: Value::Str(v.into()),
    };
    let count = |p: &Predicate| evaluate(&r, p).unwrap().len();
    assert_eq!(count(&cmp(CmpOp::Eq, "id-0037")), 1);
    assert_eq!(count(&cmp(CmpOp::Lt, "id-0100")), 90);
    assert_eq!(count(&cmp(CmpOp::NotEq, "id-0037")), 179);
    let like = Predicate::Like {
        column: "u".into(),
        pattern: "id-01%".into(),
        negated: false,
        case_insensitive: false,
    };
    assert_eq!(count(&like), 90);
    // Outside the segment's [min, max]: pruned from statistics alone.
    assert!(!may_match(&r, &cmp(CmpOp::Eq, "zz")).unwrap());
    assert!(may_match(&r, &cmp(CmpOp::Eq, "id-0037")).unwrap());
    let docs: Vec<u32> = evaluate(&r, &cmp(CmpOp::Eq, "id-0037"))
        .unwrap()
        .iter()
        .collect();
    assert_eq!(
        value_of(&r.read_column(8, &docs).unwrap(), 0),
        Some(V::S("id-0037".into()))
    );
}

/// A segment whose two string columns, `indexed` and `plain`, hold the same `values` (in
/// 64-row blocks; raw strings allowed or not): an index against the value path.
pub(crate) fn same_strings_twice(
    indexed: ColumnDef,
    plain: ColumnDef,
    values: &[Option<String>],
    raw_strings: bool,
) -> SegmentReader {
    let arrow = Arc::new(Schema::new(vec![
        Field::new(&indexed.name, DataType::Utf8, true),
        Field::new(&plain.name, DataType::Utf8, true),
    ]));
    let schema = SegmentSchema {
        columns: vec![indexed, plain],
        time_column: None,
        star_trees: Vec::new(),
    };
    let col: ArrayRef = Arc::new(StringArray::from_iter(values.iter().map(|v| v.as_deref())));
    let batch = RecordBatch::try_new(arrow, vec![col.clone(), col]).unwrap();
    let opts = BuildOptions {
        block_rows: 64,
        raw_strings,
        ..Default::default()
    };
    SegmentReader::open(Bytes::from(
        build_segment(&schema, &[batch], &opts).unwrap(),
    ))
    .unwrap()
}

#[test]
fn integer_blocks_after_a_clear_first_block_read_back() {
    // The first block is a clock (its deltas win clearly, so later blocks compress only
    // deltas); later blocks jump around, where frames of reference would be smaller.
    let schema = SegmentSchema {
        columns: vec![ColumnDef::new("n", ColumnType::Long)],
        time_column: None,
        star_trees: Vec::new(),
    };
    let n = 4096usize;
    let vals: Vec<Option<i64>> = (0..n)
        .map(|i| match i < 1024 {
            true => Some(1_700_000_000_000 + i as i64),
            false if i % 11 == 0 => None,
            false => Some(((i as i64 * 7919) % 1000) * if i % 2 == 0 { 1 } else { -1 }),
        })
        .collect();
    let batch = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, true)])),
        vec![Arc::new(Int64Array::from(vals.clone())) as ArrayRef],
    )
    .unwrap();
    let options = BuildOptions {
        block_rows: 1024,
        ..BuildOptions::default()
    };
    let r = SegmentReader::open(Bytes::from(
        build_segment(&schema, &[batch], &options).unwrap(),
    ))
    .unwrap();
    assert!(matches!(
        r.column_meta(0).encoding,
        crate::layout::Encoding::Packed
    ));
    let docs: Vec<u32> = (0..n as u32).collect();
    let a = r.read_column(0, &docs).unwrap();
    for (doc, want) in vals.iter().enumerate() {
        assert_eq!(value_of(&a, doc), want.map(V::I), "doc {doc}");
    }
}
