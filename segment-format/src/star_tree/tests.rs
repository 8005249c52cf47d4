//! Star-trees against the rows they summarise: for random rows, trees and queries, the
//! records [`StarTree::select`] lists aggregate to exactly what the rows the segment's own
//! predicate evaluation keeps aggregate to, group by group.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use proptest::prelude::*;

use super::*;
use crate::builder::{build_segment, BuildOptions};
use crate::predicate::{evaluate, CmpOp, Predicate};
use crate::reader::SegmentReader;
use crate::types::{ColumnDef, ColumnType, Value};

const DIMS: [&str; 3] = ["a", "b", "c"];

fn schema(leaf: u32) -> SegmentSchema {
    SegmentSchema {
        columns: vec![
            ColumnDef::new("a", ColumnType::String),
            ColumnDef::new("b", ColumnType::Long),
            ColumnDef::new("c", ColumnType::String),
            ColumnDef::new("v", ColumnType::Long),
            ColumnDef::new("f", ColumnType::Double),
            ColumnDef::new("u", ColumnType::String),
        ],
        time_column: None,
        star_trees: vec![StarTreeDef {
            dimensions: DIMS.iter().map(|d| d.to_string()).collect(),
            metrics: vec![
                StarMetric::Count,
                StarMetric::Sum("v".into()),
                StarMetric::Min("v".into()),
                StarMetric::Max("f".into()),
                StarMetric::ApproxDistinct("u".into()),
            ],
            max_leaf_records: leaf,
        }],
    }
}

type Row = (Option<u8>, Option<u8>, u8, Option<i64>, f64, u16);

fn segment(rows: &[Row], leaf: u32) -> SegmentReader {
    SegmentReader::open(Bytes::from(segment_bytes(rows, leaf))).unwrap()
}

fn segment_bytes(rows: &[Row], leaf: u32) -> Vec<u8> {
    let names = ["x", "y", "z", "w"];
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter(
            rows.iter().map(|r| r.0.map(|v| names[v as usize % 4])),
        )),
        Arc::new(Int64Array::from_iter(
            rows.iter().map(|r| r.1.map(|v| v as i64 * 10)),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| names[r.2 as usize % 4]),
        )),
        Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.3))),
        Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.4))),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| format!("user{}", r.5)),
        )),
    ];
    let arrow = Arc::new(Schema::new(vec![
        Field::new("a", DataType::Utf8, true),
        Field::new("b", DataType::Int64, true),
        Field::new("c", DataType::Utf8, true),
        Field::new("v", DataType::Int64, true),
        Field::new("f", DataType::Float64, true),
        Field::new("u", DataType::Utf8, true),
    ]));
    let batch = RecordBatch::try_new(arrow, cols).unwrap();
    let opts = BuildOptions {
        block_rows: 64,
        ..BuildOptions::default()
    };
    build_segment(&schema(leaf), &[batch], &opts).unwrap()
}

/// One group's aggregates: count, (non-null v count, sum v, min v), max f, registers.
#[derive(Debug, Default, Clone, PartialEq)]
struct Agg {
    count: u64,
    v_nonnull: u64,
    v_sum: i64,
    v_min: Option<i64>,
    f_max: Option<i64>,
    registers: BTreeMap<u16, u8>,
}

fn filter_for(d: usize, kind: u8, value: u8) -> Option<Predicate> {
    let column = DIMS[d].to_string();
    let lit = |v: u8| match d {
        1 => Value::Int(v as i64 * 10),
        _ => Value::Str(["x", "y", "z", "w"][v as usize % 4].into()),
    };
    Some(match kind % 7 {
        0 => return None,
        1 => Predicate::Compare {
            column,
            op: CmpOp::Eq,
            value: lit(value),
        },
        2 => Predicate::InList {
            column,
            values: vec![lit(value), lit(value + 1)],
            negated: false,
        },
        3 => Predicate::IsNull {
            column,
            negated: value.is_multiple_of(2),
        },
        4 => Predicate::Not(Box::new(Predicate::Compare {
            column,
            op: CmpOp::Eq,
            value: lit(value),
        })),
        5 => Predicate::Or(vec![
            Predicate::Compare {
                column: column.clone(),
                op: CmpOp::Gt,
                value: lit(value),
            },
            Predicate::IsNull {
                column,
                negated: false,
            },
        ]),
        _ => Predicate::Compare {
            column,
            op: CmpOp::NotEq,
            value: lit(value),
        },
    })
}

fn ids_of(r: &SegmentReader, col: usize, docs: &[u32]) -> Vec<u32> {
    let ids = r.read_ids(col, docs).unwrap().unwrap();
    let nulls = r.nulls(col).unwrap();
    ids.into_iter()
        .zip(docs)
        .map(|(id, d)| if nulls.contains(*d) { NULL_ID } else { id })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn selected_records_aggregate_like_the_rows(
        rows in proptest::collection::vec(
            (proptest::option::of(0u8..4), proptest::option::of(0u8..5), 0u8..4,
             proptest::option::of(-50i64..50), -10.0f64..10.0, 0u16..40),
            0..300),
        leaf in 1u32..20,
        grouped in proptest::collection::vec(any::<bool>(), 3),
        filters in proptest::collection::vec((0u8..7, 0u8..4), 3),
    ) {
        let r = segment(&rows, leaf);
        prop_assert_eq!(r.footer().star_trees.len(), 1);
        let tree = r.star_tree(0).unwrap();
        let parts: Vec<Predicate> = filters
            .iter()
            .enumerate()
            .filter_map(|(d, &(k, v))| filter_for(d, k, v))
            .collect();
        let predicate = match parts.len() {
            0 => Predicate::Const(true),
            _ => Predicate::And(parts),
        };
        // The rows' answer.
        let docs: Vec<u32> = match &predicate {
            Predicate::Const(true) => (0..r.row_count()).collect(),
            p => evaluate(&r, p).unwrap().iter().collect(),
        };
        let col_ids: Vec<Vec<u32>> = (0..3).map(|c| ids_of(&r, c, &docs)).collect();
        let v = r.read_column(3, &docs).unwrap();
        let v = v.as_any().downcast_ref::<Int64Array>().unwrap();
        let f = r.read_column(4, &docs).unwrap();
        let f = f.as_any().downcast_ref::<Float64Array>().unwrap();
        let u = arrow::compute::cast(&r.read_column(5, &docs).unwrap(), &DataType::Utf8).unwrap();
        let u = u.as_any().downcast_ref::<StringArray>().unwrap();
        let mut want: BTreeMap<Vec<u32>, Agg> = BTreeMap::new();
        #[allow(clippy::needless_range_loop)] // rows index several columns at once
        for i in 0..docs.len() {
            let key: Vec<u32> = (0..3).filter(|&d| grouped[d]).map(|d| col_ids[d][i]).collect();
            let g = want.entry(key).or_default();
            g.count += 1;
            if v.is_valid(i) {
                g.v_nonnull += 1;
                g.v_sum += v.value(i);
                g.v_min = Some(g.v_min.map_or(v.value(i), |m| m.min(v.value(i))));
            }
            let fb = crate::layout::f64_key(f.value(i));
            g.f_max = Some(g.f_max.map_or(fb, |m| m.max(fb)));
            let (reg, rank) = sketch_register(sketch_hash_str(u.value(i)));
            let e = g.registers.entry(reg).or_insert(0);
            *e = (*e).max(rank);
        }
        // The tree's answer.
        let filters = match &predicate {
            Predicate::Const(true) => vec![None; 3],
            p => dimension_filters(&r, p, &tree.def.dimensions).unwrap().expect("per dimension"),
        };
        let uses: Vec<Option<DimUse>> = (0..3)
            .map(|d| (grouped[d] || filters[d].is_some()).then(|| DimUse {
                grouped: grouped[d],
                filter: filters[d].clone(),
            }))
            .collect();
        let mut got: BTreeMap<Vec<u32>, Agg> = BTreeMap::new();
        let MetricValues::Int { nonnull: vn, values: vs } = &tree.metrics[1] else { panic!() };
        let MetricValues::Int { nonnull: mn, values: ms } = &tree.metrics[2] else { panic!() };
        let MetricValues::Float { nonnull: fnn, values: fs } = &tree.metrics[3] else { panic!() };
        let MetricValues::Sketch { offsets, registers, ranks } = &tree.metrics[4] else { panic!() };
        let selected = tree.select(&uses).unwrap();
        prop_assert!(selected.len() <= tree.records());
        for rec in selected {
            let rec = rec as usize;
            let key: Vec<u32> = (0..3).filter(|&d| grouped[d]).map(|d| tree.dimension(d)[rec]).collect();
            let g = got.entry(key).or_default();
            g.count += tree.count[rec];
            g.v_nonnull += vn[rec];
            if vn[rec] > 0 {
                g.v_sum += vs[rec];
            }
            if mn[rec] > 0 {
                g.v_min = Some(g.v_min.map_or(ms[rec], |m| m.min(ms[rec])));
            }
            if fnn[rec] > 0 {
                let fb = crate::layout::f64_key(fs[rec]);
                g.f_max = Some(g.f_max.map_or(fb, |m| m.max(fb)));
            }
            for k in offsets[rec] as usize..offsets[rec + 1] as usize {
                let e = g.registers.entry(registers[k]).or_insert(0);
                *e = (*e).max(ranks[k]);
            }
        }
        // Groups without rows: the rows' side has none either.
        got.retain(|_, g| g.count > 0);
        prop_assert_eq!(got, want);
    }
}

#[test]
fn metrics_parse_and_print() {
    for (s, m) in [
        ("count(*)", StarMetric::Count),
        ("SUM(revenue)", StarMetric::Sum("revenue".into())),
        ("max( latency_ms )", StarMetric::Max("latency_ms".into())),
        (
            "DistinctCountHLL(user_id)",
            StarMetric::ApproxDistinct("user_id".into()),
        ),
    ] {
        assert_eq!(StarMetric::parse(s).unwrap(), m);
        assert_eq!(StarMetric::parse(&m.to_string()).unwrap(), m);
    }
    for bad in [
        "count(x)",
        "avg(x)",
        "sum()",
        "sum(a b)",
        "sum(x",
        "sum(x); drop",
    ] {
        assert!(StarMetric::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn a_star_child_sums_the_dimension_away() {
    // 4 values of `a` x 4 of `c`, leaves of 1 record: a query on `c` alone reads the star
    // records of `a` and `b` (4 records), not the 16 base records.
    let rows: Vec<Row> = (0..64u8)
        .map(|i| (Some(i % 4), Some(0), (i / 4) % 4, Some(1), 0.0, 0))
        .collect();
    let r = segment(&rows, 1);
    let tree = r.star_tree(0).unwrap();
    let uses = vec![
        None,
        None,
        Some(DimUse {
            grouped: true,
            filter: None,
        }),
    ];
    let got = tree.select(&uses).unwrap();
    assert_eq!(got.len(), 4);
    assert!(got.iter().all(|&rec| tree.count[rec as usize] == 16));
}

#[test]
fn damaged_trees_are_errors() {
    let rows: Vec<Row> = (0..200u16)
        .map(|i| {
            (
                Some((i % 4) as u8),
                Some((i % 3) as u8),
                (i % 2) as u8,
                Some(i as i64),
                1.0,
                i,
            )
        })
        .collect();
    let file = segment_bytes(&rows, 2);
    let r = SegmentReader::open(Bytes::from(file.clone())).unwrap();
    let def = &r.footer().schema.star_trees[0];
    let floats = float_metrics(&r.footer().schema, def);
    let meta = &r.footer().star_trees[0];
    let bytes = crate::layout::read_section(&file, &meta.section, "star-tree")
        .unwrap()
        .into_owned();
    let tree = r.star_tree(0).unwrap();
    // Every truncation and many single-byte changes decode to an error or a tree whose
    // queries return without panicking.
    for cut in (0..bytes.len()).step_by(7) {
        assert!(StarTree::decode(def, &floats, &bytes[..cut]).is_err());
    }
    let all = vec![Some(DimUse::default()), None, None];
    for i in (0..bytes.len()).step_by(3) {
        let mut b = bytes.clone();
        b[i] ^= 0x5a;
        if let Ok(t) = StarTree::decode(def, &floats, &b) {
            let _ = t.select(&all);
        }
    }
    assert!(tree.records() > 0);
}
