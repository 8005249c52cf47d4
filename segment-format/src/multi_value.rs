//! Multi-value columns (format 3): a doc holds an array of strings or integers, as Pinot's
//! multi-value columns. In: an Arrow `List` column. Out: its sections and footer entry, and
//! back: decoded blocks and Arrow `List` arrays for chosen docs.
//!
//! Always dictionary-encoded over the flattened values. A block holds its docs' value counts
//! (`count_width` bits each) and then the ids of their values (`bit_width` bits each), both
//! bit-packed. A null doc has count 0 and is in the null bitmap (an empty array is not
//! null). Zone maps and stats are over the ids; the inverted index maps an id to the docs
//! holding that value. Values inside an array are never null.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int64Array, ListArray, StringArray};
use arrow::buffer::{NullBuffer, OffsetBuffer};
use arrow::datatypes::{DataType, Field, Int64Type};
use roaring::RoaringBitmap;

use crate::bitpack;
use crate::bloom::Bloom;
use crate::builder::Encoded;
use crate::builder::{dict_numeric, dict_strings, write_bitmap, write_bitmaps, BuildOptions};
use crate::error::{corrupt, Result, SegmentError};
use crate::layout::{BlockMeta, Codec, ColumnMeta, ColumnStats, Encoding, FileWriter, ZoneMap};
use crate::postings::TableKind;
use crate::reader::Dictionary;
use crate::types::{ColumnDef, IndexKind, Physical};

/// The Arrow type of a multi-value column of element physical kind `p`.
pub fn list_type(p: Physical) -> DataType {
    let item = match p {
        Physical::Str => DataType::Utf8,
        _ => DataType::Int64,
    };
    DataType::List(Arc::new(Field::new_list_field(item, true)))
}

fn schema_error(def: &ColumnDef, message: &str) -> SegmentError {
    SegmentError::Schema {
        column: def.name.clone(),
        message: message.into(),
    }
}

/// Encodes a multi-value column (`col` is a `List` of the element type, as the builder's
/// gather leaves it).
pub(crate) fn encode_column(
    w: &mut FileWriter,
    def: &ColumnDef,
    col: &ArrayRef,
    opts: &BuildOptions,
) -> Result<ColumnMeta> {
    if def.has_index(IndexKind::Range) || def.has_index(IndexKind::Sorted) {
        return Err(schema_error(
            def,
            "range and sorted indexes do not apply to multi-value columns",
        ));
    }
    let list = col
        .as_any()
        .downcast_ref::<ListArray>()
        .ok_or_else(|| schema_error(def, "a multi-value column needs a List array"))?;
    let rows = list.len();
    // Per doc: its count; the values of non-null docs, flattened.
    let mut counts = Vec::with_capacity(rows);
    let mut take: Vec<(usize, usize)> = Vec::new();
    let offsets = list.value_offsets();
    for i in 0..rows {
        if list.is_null(i) {
            counts.push(0u32);
            continue;
        }
        let (a, b) = (offsets[i] as usize, offsets[i + 1] as usize);
        counts.push((b - a) as u32);
        take.push((a, b));
    }
    let values = list.values();
    // Only the values of non-null docs count (a null doc's slot may hold anything).
    if values.null_count() > 0 && take.iter().any(|&(a, b)| (a..b).any(|j| values.is_null(j))) {
        return Err(schema_error(def, "an array holds a null value"));
    }
    let encoded = match def.ty.physical() {
        Physical::Str => {
            let strings = values.as_string::<i32>();
            let flat: StringArray = take
                .iter()
                .flat_map(|&(a, b)| (a..b).map(|j| Some(strings.value(j))))
                .collect();
            dict_strings(&flat, false)
        }
        Physical::I64 => {
            let ints = values.as_primitive::<Int64Type>();
            let flat: Vec<Option<i64>> = take
                .iter()
                .flat_map(|&(a, b)| (a..b).map(|j| Some(ints.value(j))))
                .collect();
            dict_numeric(&flat, false, usize::MAX).expect("no limit")
        }
        _ => {
            return Err(schema_error(
                def,
                "multi-value columns hold strings or integers",
            ))
        }
    };
    let Encoded::Dict {
        ids,
        cardinality,
        dictionary,
        min_str,
        max_str,
        id_keys,
        hashes,
    } = encoded
    else {
        unreachable!("multi-value columns are always dictionary-encoded")
    };
    let nulls: RoaringBitmap = (0..rows as u32)
        .filter(|&i| list.is_null(i as usize))
        .collect();
    let nulls_ref = match nulls.is_empty() {
        true => None,
        false => Some(write_bitmap(w, &nulls)?),
    };
    // At least one bit per value, so a block's bytes bound its value count.
    let bit_width = bitpack::width_for(cardinality).max(1);
    let max_count = counts.iter().copied().max().unwrap_or(0) as usize;
    let count_width = bitpack::width_for(max_count + 1);
    let mut blocks = Vec::new();
    let mut inverted = def
        .has_index(IndexKind::Inverted)
        .then(|| vec![RoaringBitmap::new(); cardinality]);
    let mut at = 0usize;
    for start in (0..rows).step_by(opts.block_rows) {
        let end = (start + opts.block_rows).min(rows);
        let n: usize = counts[start..end].iter().map(|&c| c as usize).sum();
        let block_ids = &ids[at..at + n];
        if let Some(inv) = &mut inverted {
            let mut k = at;
            for (doc, &c) in (start..end).zip(&counts[start..end]) {
                for &id in &ids[k..k + c as usize] {
                    inv[id as usize].insert(doc as u32);
                }
                k += c as usize;
            }
        }
        let mut raw = bitpack::pack(&counts[start..end], count_width);
        raw.extend(bitpack::pack(block_ids, bit_width));
        let zone = match (block_ids.iter().min(), block_ids.iter().max()) {
            (Some(&a), Some(&b)) => Some(ZoneMap {
                min: a as i64,
                max: b as i64,
            }),
            _ => None,
        };
        blocks.push(BlockMeta {
            data: w.write(&raw, Codec::Zstd)?,
            zone,
            null_count: nulls.range(start as u32..end as u32).len() as u32,
        });
        at += n;
    }
    let bloom = if def.has_index(IndexKind::Bloom) {
        let mut b = Bloom::with_capacity(hashes.len());
        hashes.iter().for_each(|&h| b.insert(h));
        Some(w.write(&b.to_bytes(), Codec::None)?)
    } else {
        None
    };
    Ok(ColumnMeta {
        name: def.name.clone(),
        encoding: Encoding::MultiValue {
            cardinality: cardinality as u32,
            bit_width,
            count_width,
            dictionary: w.write(&dictionary, Codec::Zstd)?,
        },
        blocks,
        nulls: nulls_ref,
        stats: ColumnStats {
            min_key: id_keys.as_ref().and_then(|k| k.first().copied()),
            max_key: id_keys.as_ref().and_then(|k| k.last().copied()),
            min_str,
            max_str,
            null_count: nulls.len(),
            distinct: Some(cardinality as u64),
            sorted: false,
        },
        inverted: match inverted {
            Some(bms) => Some(write_bitmaps(w, &bms, TableKind::Inverted)?),
            None => None,
        },
        range: None,
        sorted_runs: None,
        bloom,
        text: None,
        json: None,
    })
}

/// Decodes one block's bytes: per doc its count, and every value's id (checked against the
/// dictionary).
pub(crate) fn decode_block(
    raw: &[u8],
    rows: usize,
    cardinality: u32,
    bit_width: u8,
    count_width: u8,
    what: &str,
) -> Result<(Vec<u32>, Vec<u32>)> {
    let mut counts = Vec::with_capacity(rows);
    bitpack::unpack_into(raw, rows, count_width, &mut counts)?;
    let counts_len = bitpack::packed_len(rows, count_width);
    let n: u64 = counts.iter().map(|&c| c as u64).sum();
    let rest = raw.get(counts_len..).unwrap_or(&[]);
    if bit_width == 0 || n > rest.len() as u64 * 8 / bit_width as u64 {
        return Err(corrupt(format!(
            "{what} counts {n} values it does not hold"
        )));
    }
    let mut ids = Vec::with_capacity(n as usize);
    bitpack::unpack_into(rest, n as usize, bit_width, &mut ids)?;
    if n > 0 && cardinality == 0 || ids.iter().any(|&id| id >= cardinality) {
        return Err(corrupt(format!("{what} holds an id past the dictionary")));
    }
    Ok((counts, ids))
}

/// The Arrow `List` array of `docs` given, per doc, its values' ids and the null docs.
pub(crate) fn list_array(
    dict: &Dictionary,
    counts: &[u32],
    ids: &[u32],
    nulls: Option<NullBuffer>,
) -> Result<ArrayRef> {
    let values: ArrayRef = match dict {
        Dictionary::Str(s) => {
            let idx = arrow::array::UInt32Array::from(ids.to_vec());
            arrow::compute::take(s, &idx, None)?
        }
        Dictionary::I64(v) => Arc::new(Int64Array::from_iter_values(
            ids.iter().map(|&i| v[i as usize]),
        )),
        Dictionary::F64(_) => {
            return Err(corrupt(
                "a multi-value column has a floating-point dictionary",
            ))
        }
    };
    let field = Arc::new(Field::new_list_field(values.data_type().clone(), true));
    let offsets = OffsetBuffer::from_lengths(counts.iter().map(|&c| c as usize));
    Ok(Arc::new(ListArray::try_new(field, offsets, values, nulls)?))
}

#[cfg(test)]
mod tests {
    use arrow::array::{ListBuilder, RecordBatch, StringBuilder};
    use arrow::datatypes::Schema;
    use bytes::Bytes;
    use proptest::prelude::*;

    use super::*;
    use crate::types::{ColumnType, SegmentSchema};
    use crate::{build_segment, Predicate, SegmentReader};

    type Doc<T> = Option<Vec<T>>;

    fn schema(indexes: bool) -> SegmentSchema {
        let mut tags = ColumnDef::multi_value("tags", ColumnType::String);
        let mut ids = ColumnDef::multi_value("ids", ColumnType::Long);
        if indexes {
            tags = tags
                .with_index(IndexKind::Inverted)
                .with_index(IndexKind::Bloom);
            ids = ids.with_index(IndexKind::Inverted);
        }
        SegmentSchema {
            columns: vec![tags, ids],
            time_column: None,
            star_trees: Vec::new(),
        }
    }

    fn batch(tags: &[Doc<String>], ids: &[Doc<i64>]) -> RecordBatch {
        let mut tb = ListBuilder::new(StringBuilder::new());
        for d in tags {
            match d {
                Some(v) => {
                    v.iter().for_each(|s| tb.values().append_value(s));
                    tb.append(true);
                }
                None => tb.append(false),
            }
        }
        let ib =
            arrow::array::ListArray::from_iter_primitive::<Int64Type, _, _>(ids.iter().map(|d| {
                d.as_ref()
                    .map(|v| v.iter().map(|&x| Some(x)).collect::<Vec<_>>())
            }));
        let tags: ArrayRef = Arc::new(tb.finish());
        let ids: ArrayRef = Arc::new(ib);
        let schema = Schema::new(vec![
            Field::new("tags", tags.data_type().clone(), true),
            Field::new("ids", ids.data_type().clone(), true),
        ]);
        RecordBatch::try_new(Arc::new(schema), vec![tags, ids]).unwrap()
    }

    fn opts(block_rows: usize) -> BuildOptions {
        BuildOptions {
            block_rows,
            ..BuildOptions::default()
        }
    }

    /// The column as `Doc`s, read back through Arrow.
    fn strings(a: &ArrayRef) -> Vec<Doc<String>> {
        let l = a.as_list::<i32>();
        (0..l.len())
            .map(|i| {
                (!l.is_null(i)).then(|| {
                    let v = l.value(i);
                    let s = v.as_string::<i32>();
                    (0..s.len()).map(|j| s.value(j).to_string()).collect()
                })
            })
            .collect()
    }

    fn longs(a: &ArrayRef) -> Vec<Doc<i64>> {
        let l = a.as_list::<i32>();
        (0..l.len())
            .map(|i| {
                (!l.is_null(i)).then(|| l.value(i).as_primitive::<Int64Type>().values().to_vec())
            })
            .collect()
    }

    fn doc_strategy() -> impl Strategy<Value = (Doc<String>, Doc<i64>)> {
        (
            prop::option::weighted(
                0.9,
                prop::collection::vec("[a-e]{0,3}".prop_map(String::from), 0..5),
            ),
            prop::option::weighted(0.9, prop::collection::vec(-3i64..1000, 0..6)),
        )
    }

    proptest! {
        #[test]
        fn round_trips_any_doc_subset(
            docs in prop::collection::vec(doc_strategy(), 0..300),
            block_rows in 1usize..70,
            pick in prop::collection::vec(any::<bool>(), 300),
            indexes in any::<bool>(),
        ) {
            let (tags, ids): (Vec<_>, Vec<_>) = docs.into_iter().unzip();
            let bytes = build_segment(&schema(indexes), &[batch(&tags, &ids)], &opts(block_rows)).unwrap();
            let r = SegmentReader::open(Bytes::from(bytes)).unwrap();
            prop_assert_eq!(r.footer().format_version, crate::FORMAT_VERSION);
            let chosen: Vec<u32> = (0..tags.len() as u32).filter(|&d| pick[d as usize]).collect();
            let b = r.read_batch(&[0, 1], &chosen).unwrap();
            let want_tags: Vec<_> = chosen.iter().map(|&d| tags[d as usize].clone()).collect();
            let want_ids: Vec<_> = chosen.iter().map(|&d| ids[d as usize].clone()).collect();
            prop_assert_eq!(strings(b.column(0)), want_tags);
            prop_assert_eq!(longs(b.column(1)), want_ids);
            let read_schema = b.schema();
            prop_assert_eq!(read_schema.field(0).data_type(), r.arrow_schema().field(0).data_type());
            // Nulls and stats.
            let nulls = tags.iter().filter(|d| d.is_none()).count() as u64;
            prop_assert_eq!(r.nulls(0).unwrap().len(), nulls);
            let distinct: std::collections::BTreeSet<&String> = tags.iter().flatten().flatten().collect();
            prop_assert_eq!(r.column_meta(0).stats.distinct, Some(distinct.len() as u64));
            prop_assert_eq!(r.column_meta(0).stats.min_str.as_ref(), distinct.first().copied());
        }

        #[test]
        fn damaged_multi_value_segments_are_errors(
            docs in prop::collection::vec(doc_strategy(), 1..80),
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            cut in any::<prop::sample::Index>(),
            truncate in any::<bool>(),
        ) {
            let (tags, ids): (Vec<_>, Vec<_>) = docs.into_iter().unzip();
            let mut bytes = build_segment(&schema(true), &[batch(&tags, &ids)], &opts(16)).unwrap();
            if truncate {
                bytes.truncate(cut.index(bytes.len()));
            } else {
                for (at, x) in flips {
                    let i = at.index(bytes.len());
                    bytes[i] ^= x.max(1);
                }
            }
            crate::tests::exercise(bytes);
        }
    }

    fn fixture_input() -> (Vec<Doc<String>>, Vec<Doc<i64>>) {
        let words = ["red", "green", "blue", "new", "sale"];
        (0..300u64)
            .map(|i| {
                let tags = (i % 17 != 0).then(|| {
                    (0..i % 4)
                        .map(|k| words[((i + k * 3) % 5) as usize].to_string())
                        .collect()
                });
                let ids =
                    (i % 23 != 0).then(|| (0..i % 3).map(|k| (i * 31 + k) as i64 % 97).collect());
                (tags, ids)
            })
            .unzip()
    }

    /// The checked-in multi-value segment written by the format-3 build (from
    /// `fixture_input`, `schema(true)`, `opts(64)`) still reads as built; older fixtures are
    /// never rewritten.
    #[test]
    fn multi_value_fixture_still_reads_the_same() {
        let (tags, ids) = fixture_input();
        let bytes = include_bytes!("../fixtures/v3-multi-value.seg");
        let r = SegmentReader::open(Bytes::from_static(bytes)).unwrap();
        assert_eq!(r.footer().format_version, 3);
        let all: Vec<u32> = (0..r.row_count()).collect();
        let b = r.read_batch(&[0, 1], &all).unwrap();
        assert_eq!(strings(b.column(0)), tags);
        assert_eq!(longs(b.column(1)), ids);
    }

    /// A leaf over one column and what it means for one doc's values (any value matches).
    #[derive(Debug, Clone)]
    enum Leaf {
        TagEq(String),
        TagIn(Vec<String>),
        TagPrefix(String),
        IdLt(i64),
        IdBetween(i64, i64),
        IdIn(Vec<i64>),
    }

    impl Leaf {
        fn predicate(&self) -> Predicate {
            use crate::{CmpOp, Value};
            let (tags, ids) = ("tags".to_string(), "ids".to_string());
            match self {
                Leaf::TagEq(s) => Predicate::Compare {
                    column: tags,
                    op: CmpOp::Eq,
                    value: Value::Str(s.clone()),
                },
                Leaf::TagIn(v) => Predicate::InList {
                    column: tags,
                    values: v.iter().map(|s| Value::Str(s.clone())).collect(),
                    negated: false,
                },
                Leaf::TagPrefix(p) => Predicate::Like {
                    column: tags,
                    pattern: format!("{p}%"),
                    negated: false,
                    case_insensitive: false,
                },
                Leaf::IdLt(x) => Predicate::Compare {
                    column: ids,
                    op: CmpOp::Lt,
                    value: Value::Int(*x),
                },
                Leaf::IdBetween(a, b) => Predicate::Between {
                    column: ids,
                    low: Value::Int(*a),
                    high: Value::Int(*b),
                },
                Leaf::IdIn(v) => Predicate::InList {
                    column: ids,
                    values: v.iter().map(|&x| Value::Int(x)).collect(),
                    negated: false,
                },
            }
        }

        /// TRUE, FALSE or UNKNOWN (null doc) for one doc.
        fn eval(&self, tags: &Doc<String>, ids: &Doc<i64>) -> Option<bool> {
            Some(match self {
                Leaf::TagEq(s) => tags.as_ref()?.iter().any(|t| t == s),
                Leaf::TagIn(v) => tags.as_ref()?.iter().any(|t| v.contains(t)),
                Leaf::TagPrefix(p) => tags.as_ref()?.iter().any(|t| t.starts_with(p.as_str())),
                Leaf::IdLt(x) => ids.as_ref()?.iter().any(|i| i < x),
                Leaf::IdBetween(a, b) => ids.as_ref()?.iter().any(|i| a <= i && i <= b),
                Leaf::IdIn(v) => ids.as_ref()?.iter().any(|i| v.contains(i)),
            })
        }
    }

    fn leaf_strategy() -> impl Strategy<Value = Leaf> {
        let word = "[a-e]{0,2}".prop_map(String::from);
        prop_oneof![
            word.clone().prop_map(Leaf::TagEq),
            prop::collection::vec(word.clone(), 1..4).prop_map(Leaf::TagIn),
            "[a-e]{1,2}".prop_map(|p| Leaf::TagPrefix(p.to_string())),
            (-5i64..1005).prop_map(Leaf::IdLt),
            (-5i64..1005, 0i64..300).prop_map(|(a, w)| Leaf::IdBetween(a, a + w)),
            prop::collection::vec(-3i64..1000, 1..5).prop_map(Leaf::IdIn),
            // Every value matches: docs without values must still not.
            Just(Leaf::IdLt(5000)),
            Just(Leaf::TagPrefix(String::new())),
        ]
    }

    proptest! {
        /// Any-value semantics for leaves, none-of-the-values under NOT (a null doc is
        /// UNKNOWN, so neither), AND/OR of two leaves; with and without the inverted index.
        #[test]
        fn filters_match_a_reference_model(
            docs in prop::collection::vec(doc_strategy(), 1..250),
            block_rows in 1usize..70,
            indexes in any::<bool>(),
            a in leaf_strategy(),
            b in leaf_strategy(),
        ) {
            let (tags, ids): (Vec<_>, Vec<_>) = docs.into_iter().unzip();
            let bytes = build_segment(&schema(indexes), &[batch(&tags, &ids)], &opts(block_rows)).unwrap();
            let r = SegmentReader::open(Bytes::from(bytes)).unwrap();
            let docs = || (0..tags.len()).map(|d| (d as u32, &tags[d], &ids[d]));
            let want = |f: &dyn Fn(&Doc<String>, &Doc<i64>) -> bool| -> Vec<u32> {
                docs().filter(|(_, t, i)| f(t, i)).map(|(d, _, _)| d).collect()
            };
            let got = |p: &Predicate| -> Vec<u32> { crate::evaluate(&r, p).unwrap().iter().collect() };
            prop_assert_eq!(got(&a.predicate()), want(&|t, i| a.eval(t, i) == Some(true)));
            let not_a = Predicate::Not(Box::new(a.predicate()));
            prop_assert_eq!(got(&not_a), want(&|t, i| a.eval(t, i) == Some(false)));
            let and = Predicate::And(vec![a.predicate(), b.predicate()]);
            prop_assert_eq!(got(&and), want(&|t, i| a.eval(t, i) == Some(true) && b.eval(t, i) == Some(true)));
            let or = Predicate::Or(vec![a.predicate(), b.predicate()]);
            prop_assert_eq!(got(&or), want(&|t, i| a.eval(t, i) == Some(true) || b.eval(t, i) == Some(true)));
            // Pruning never drops a segment that has a match.
            if !got(&a.predicate()).is_empty() {
                prop_assert!(crate::may_match(&r, &a.predicate()).unwrap());
            }
        }
    }

    #[test]
    fn some_value_differs_filters_are_refused() {
        let tags = vec![Some(vec!["a".to_string()]), None];
        let ids = vec![Some(vec![1]), Some(vec![])];
        let bytes = build_segment(&schema(true), &[batch(&tags, &ids)], &opts(8)).unwrap();
        let r = SegmentReader::open(Bytes::from(bytes)).unwrap();
        let p = Predicate::Compare {
            column: "tags".into(),
            op: crate::CmpOp::NotEq,
            value: crate::Value::Str("a".into()),
        };
        let e = crate::evaluate(&r, &p).unwrap_err().to_string();
        assert!(e.contains("tags") && e.contains("NOT (column"), "{e}");
        assert!(crate::may_match(&r, &p).is_err());
        let null = Predicate::IsNull {
            column: "tags".into(),
            negated: false,
        };
        assert_eq!(
            crate::evaluate(&r, &null)
                .unwrap()
                .iter()
                .collect::<Vec<_>>(),
            vec![1]
        );
    }

    #[test]
    fn null_values_inside_arrays_and_range_indexes_are_refused() {
        let a = arrow::array::ListArray::from_iter_primitive::<Int64Type, _, _>(vec![Some(vec![
            Some(1),
            None,
        ])]);
        let s = SegmentSchema {
            columns: vec![ColumnDef::multi_value("ids", ColumnType::Long)],
            time_column: None,
            star_trees: Vec::new(),
        };
        let b = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new(
                "ids",
                a.data_type().clone(),
                true,
            )])),
            vec![Arc::new(a)],
        )
        .unwrap();
        let e = build_segment(&s, std::slice::from_ref(&b), &opts(8)).unwrap_err();
        assert!(e.to_string().contains("null value"), "{e}");
        let mut s2 = s.clone();
        s2.columns[0] = s2.columns[0].clone().with_index(IndexKind::Range);
        let e = build_segment(&s2, &[b], &opts(8)).unwrap_err();
        assert!(e.to_string().contains("range and sorted"), "{e}");
    }
}
