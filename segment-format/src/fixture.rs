//! Format compatibility: `fixtures/vN.seg` was written by format version N and must stay
//! readable with the same answers by every later build. `BASALT_WRITE_FIXTURE=1 cargo test -p
//! basalt-segment fixture` writes the current version's file (once, when the format version
//! changes; older files are never rewritten).

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Date32Array, Decimal128Array, Float64Array, Int32Array,
    Int64Array, StringArray, TimestampMillisecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow::record_batch::RecordBatch;
use bytes::Bytes;

use crate::builder::{build_segment, BuildOptions};
use crate::predicate::{evaluate, CmpOp, Predicate};
use crate::reader::SegmentReader;
use crate::star_tree::{DimUse, MetricValues, StarMetric, StarTreeDef};
use crate::types::{ColumnDef, ColumnType, IndexKind, SegmentSchema, Value};

/// Every format version's fixture: its version, where it is written, and its bytes (built
/// in, so a test binary that cargo reuses for another checkout reads the right ones).
const FIXTURES: [(u32, &str, &[u8]); 10] = [
    (1, "fixtures/v1.seg", include_bytes!("../fixtures/v1.seg")),
    (2, "fixtures/v2.seg", include_bytes!("../fixtures/v2.seg")),
    (3, "fixtures/v3.seg", include_bytes!("../fixtures/v3.seg")),
    (4, "fixtures/v4.seg", include_bytes!("../fixtures/v4.seg")),
    (5, "fixtures/v5.seg", include_bytes!("../fixtures/v5.seg")),
    (6, "fixtures/v6.seg", include_bytes!("../fixtures/v6.seg")),
    (7, "fixtures/v7.seg", include_bytes!("../fixtures/v7.seg")),
    (8, "fixtures/v8.seg", include_bytes!("../fixtures/v8.seg")),
    (9, "fixtures/v9.seg", include_bytes!("../fixtures/v9.seg")),
    (
        10,
        "fixtures/v10.seg",
        include_bytes!("../fixtures/v10.seg"),
    ),
];

/// The input of the current version's fixture.
fn fixture_input() -> (SegmentSchema, RecordBatch) {
    fixture_input_for(crate::FORMAT_VERSION)
}

/// The input a version's fixture was built from: version 7 added DATE and DECIMAL columns,
/// version 8 a star-tree, version 9 a text-indexed column, version 10 a JSON-indexed column.
fn fixture_input_for(version: u32) -> (SegmentSchema, RecordBatch) {
    let (mut schema, batch) = fixture_input_v1();
    if version < 7 {
        return (schema, batch);
    }
    if version >= 8 {
        schema.star_trees.push(StarTreeDef {
            dimensions: vec!["country".into(), "status".into(), "ok".into()],
            metrics: vec![
                StarMetric::Count,
                StarMetric::Sum("qty".into()),
                StarMetric::Max("latency".into()),
                StarMetric::ApproxDistinct("meta".into()),
            ],
            max_leaf_records: 4,
        });
    }
    schema
        .columns
        .push(ColumnDef::new("day", ColumnType::Date).with_index(IndexKind::Range));
    schema.columns.push(ColumnDef::new(
        "price",
        ColumnType::Decimal {
            precision: 12,
            scale: 2,
        },
    ));
    if version >= 9 {
        schema
            .columns
            .push(ColumnDef::new("message", ColumnType::String).with_index(IndexKind::Text));
    }
    if version >= 10 {
        schema
            .columns
            .push(ColumnDef::new("attrs", ColumnType::Json).with_index(IndexKind::Json));
    }
    let n = batch.num_rows();
    let mut fields: Vec<Field> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new("day", DataType::Date32, true));
    fields.push(Field::new("price", DataType::Decimal128(12, 2), true));
    let mut cols = batch.columns().to_vec();
    cols.push(Arc::new(Date32Array::from_iter(
        (0..n).map(|i| (i % 19 != 0).then_some(20_000 + (i % 60) as i32)),
    )));
    cols.push(Arc::new(
        Decimal128Array::from_iter((0..n).map(|i| (i % 23 != 0).then_some(fixture_price(i))))
            .with_precision_and_scale(12, 2)
            .unwrap(),
    ));
    if version >= 9 {
        fields.push(Field::new("message", DataType::Utf8, true));
        cols.push(Arc::new(StringArray::from_iter(
            (0..n).map(fixture_message),
        )));
    }
    if version >= 10 {
        fields.push(Field::new("attrs", DataType::Utf8, true));
        cols.push(Arc::new(StringArray::from_iter((0..n).map(fixture_attrs))));
    }
    (
        schema,
        RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).unwrap(),
    )
}

/// Row i's log line (format 9's text-indexed column).
fn fixture_message(i: usize) -> Option<String> {
    (!i.is_multiple_of(29)).then(|| {
        format!(
            "{} {} took {}ms: {}",
            ["GET", "POST", "PUT"][i % 3],
            ["/api/users", "/login", "/static/app.js", "/api/orders"][i % 4],
            i % 97,
            if i.is_multiple_of(5) {
                "failed, Timeout"
            } else {
                "ok"
            }
        )
    })
}

/// Row i's JSON attributes (format 10's JSON-indexed column); every 31st is NULL and every
/// 37th is not JSON.
fn fixture_attrs(i: usize) -> Option<String> {
    if i.is_multiple_of(31) {
        return None;
    }
    if i.is_multiple_of(37) {
        return Some(format!("not json {i}"));
    }
    let browser = ["firefox", "chrome", "safari"][i % 3];
    let mut doc = serde_json::json!({
        "browser": { "name": browser, "version": i % 7 },
        "tags": (0..i % 4).map(|t| format!("t{t}")).collect::<Vec<_>>(),
    });
    if i.is_multiple_of(2) {
        doc["user"] = serde_json::json!({ "id": i, "premium": i.is_multiple_of(4) });
    }
    Some(doc.to_string())
}

/// Row i's price in cents: signed, with many distinct values.
fn fixture_price(i: usize) -> i128 {
    (i as i128 * 7919) % 100_003 - 20_000
}

fn fixture_input_v1() -> (SegmentSchema, RecordBatch) {
    let mut ts = ColumnDef::new("ts", ColumnType::Timestamp);
    ts.nullable = false;
    let schema = SegmentSchema {
        columns: vec![
            ts,
            ColumnDef::new("country", ColumnType::String)
                .with_index(IndexKind::Inverted)
                .with_index(IndexKind::Bloom),
            ColumnDef::new("status", ColumnType::String).with_index(IndexKind::Sorted),
            ColumnDef::new("qty", ColumnType::Int),
            ColumnDef::new("big", ColumnType::Long),
            ColumnDef::new("latency", ColumnType::Double).with_index(IndexKind::Range),
            ColumnDef::new("ok", ColumnType::Boolean),
            ColumnDef::new("meta", ColumnType::Json),
        ],
        time_column: Some("ts".into()),
        star_trees: Vec::new(),
    };
    let n = 1000usize;
    let arrow = Arc::new(Schema::new(vec![
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
        Field::new("country", DataType::Utf8, true),
        Field::new("status", DataType::Utf8, true),
        Field::new("qty", DataType::Int32, true),
        Field::new("big", DataType::Int64, true),
        Field::new("latency", DataType::Float64, true),
        Field::new("ok", DataType::Boolean, true),
        Field::new("meta", DataType::Utf8, true),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(TimestampMillisecondArray::from_iter_values(
            (0..n).map(|i| 1_795_860_000_000 + i as i64 * 250),
        )),
        Arc::new(StringArray::from_iter((0..n).map(|i| {
            (i % 11 != 0).then(|| ["FR", "DE", "US", "IN", "BR"][i % 5])
        }))),
        Arc::new(StringArray::from_iter_values(
            (0..n).map(|i| ["new", "paid", "shipped"][i * 7 % 3]),
        )),
        Arc::new(Int32Array::from_iter(
            (0..n).map(|i| (i % 13 != 0).then_some((i % 9) as i32)),
        )),
        Arc::new(Int64Array::from_iter_values(
            (0..n).map(|i| (i as i64).wrapping_mul(2_654_435_761) % 1_000_003),
        )),
        Arc::new(Float64Array::from_iter(
            (0..n).map(|i| (i % 17 != 0).then_some((i % 400) as f64 * 0.5)),
        )),
        Arc::new(BooleanArray::from_iter((0..n).map(|i| Some(i % 3 == 0)))),
        Arc::new(StringArray::from_iter(
            (0..n).map(|i| (i % 2 == 0).then(|| format!("{{\"k\":{i}}}"))),
        )),
    ];
    (schema, RecordBatch::try_new(arrow, cols).unwrap())
}

fn opts() -> BuildOptions {
    BuildOptions {
        block_rows: 128,
        range_buckets: 8,
        ..BuildOptions::default()
    }
}

#[test]
fn uncompressed_segments_read_the_same() {
    let (schema, batch) = fixture_input();
    let build = |compress| {
        let o = BuildOptions { compress, ..opts() };
        SegmentReader::open(Bytes::from(
            build_segment(&schema, std::slice::from_ref(&batch), &o).unwrap(),
        ))
        .unwrap()
    };
    let (z, raw) = (build(true), build(false));
    assert!(raw.size_bytes() > z.size_bytes());
    let all: Vec<u32> = (0..z.row_count()).collect();
    for c in 0..schema.columns.len() {
        let (a, b) = (
            z.read_column(c, &all).unwrap(),
            raw.read_column(c, &all).unwrap(),
        );
        assert_eq!(a.as_ref(), b.as_ref(), "column {c}");
    }
}

/// A segment built from one batch that is a slice of a larger one (arrays with an offset, as
/// a Parquet row group read whole and cut at a segment's rows gives) is the segment built from
/// a copy of those rows, and from the rows in two batches: every column kind, index, the
/// star-tree, text and JSON sections.
#[test]
fn a_sliced_batch_builds_the_segment_of_its_rows() {
    let (schema, batch) = fixture_input();
    let n = batch.num_rows();
    let sliced = batch.slice(3, n - 7);
    let indices = arrow::array::UInt32Array::from_iter_values(0..sliced.num_rows() as u32);
    let copied = arrow::compute::take_record_batch(&sliced, &indices).unwrap();
    let halves = [
        copied.slice(0, 10),
        copied.slice(10, copied.num_rows() - 10),
    ];
    let build = |batches: &[RecordBatch]| build_segment(&schema, batches, &opts()).unwrap();
    let expected = build(std::slice::from_ref(&copied));
    assert_eq!(build(std::slice::from_ref(&sliced)), expected);
    assert_eq!(build(&halves), expected);
}

#[test]
fn every_version_fixture_still_reads_the_same() {
    let (current, path, _) = FIXTURES[FIXTURES.len() - 1];
    assert_eq!(
        current,
        crate::FORMAT_VERSION,
        "add the new version's fixture"
    );
    if std::env::var("BASALT_WRITE_FIXTURE").is_ok() {
        let (schema, batch) = fixture_input();
        let bytes = build_segment(&schema, std::slice::from_ref(&batch), &opts()).unwrap();
        let dir = std::env::var("CARGO_MANIFEST_DIR").expect("run by cargo test");
        std::fs::write(std::path::Path::new(&dir).join(path), bytes).unwrap();
    }
    for (version, _, bytes) in FIXTURES {
        let (schema, batch) = fixture_input_for(version);
        check_fixture(&schema, &batch, version, bytes.to_vec());
    }
}

fn check_fixture(schema: &SegmentSchema, batch: &RecordBatch, version: u32, bytes: Vec<u8>) {
    let r = SegmentReader::open(Bytes::from(bytes)).unwrap();
    r.verify().unwrap();
    assert_eq!(r.footer().format_version, version);
    assert_eq!(r.row_count(), 1000);
    assert_eq!(
        r.footer().time_range,
        Some((1_795_860_000_000, 1_795_860_000_000 + 999 * 250))
    );
    let count = |p: Predicate| evaluate(&r, &p).unwrap().len();
    let eq = |c: &str, v: Value| Predicate::Compare {
        column: c.into(),
        op: CmpOp::Eq,
        value: v,
    };
    // Expected answers computed from the generating formulas above.
    let want_fr = (0..1000).filter(|i| i % 11 != 0 && i % 5 == 0).count() as u64;
    assert_eq!(count(eq("country", Value::Str("FR".into()))), want_fr);
    let want_paid = (0..1000).filter(|i| i * 7 % 3 == 1).count() as u64;
    assert_eq!(count(eq("status", Value::Str("paid".into()))), want_paid);
    let want_lat = (0..1000)
        .filter(|i| i % 17 != 0 && (i % 400) as f64 * 0.5 >= 150.0)
        .count() as u64;
    assert_eq!(
        count(Predicate::Compare {
            column: "latency".into(),
            op: CmpOp::GtEq,
            value: Value::Float(150.0)
        }),
        want_lat
    );
    assert_eq!(count(eq("ok", Value::Bool(true))), 334);
    assert_eq!(
        count(Predicate::IsNull {
            column: "qty".into(),
            negated: false
        }),
        77
    );
    if version >= 7 {
        // DATE: days since the epoch; DECIMAL: unscaled cents, compared exactly even with a
        // literal between two cents (Value::Ratio).
        let want_days = (0..1000)
            .filter(|i| i % 19 != 0 && 20_000 + i % 60 >= 20_030)
            .count() as u64;
        assert_eq!(
            count(Predicate::Compare {
                column: "day".into(),
                op: CmpOp::GtEq,
                value: Value::Int(20_030),
            }),
            want_days
        );
        let want_price = (0..1000usize)
            .filter(|&i| i % 23 != 0 && fixture_price(i) * 10 < 12_345)
            .count() as u64;
        assert_eq!(
            count(Predicate::Compare {
                column: "price".into(),
                op: CmpOp::Lt,
                value: Value::Ratio(12_345, 10),
            }),
            want_price
        );
        // Rows are reordered by the sorted column: compare order-free facts.
        let all: Vec<u32> = (0..1000).collect();
        let price = r
            .read_column(schema.column_index("price").unwrap(), &all)
            .unwrap();
        assert_eq!(price.data_type(), &DataType::Decimal128(12, 2));
        let p = price.as_any().downcast_ref::<Decimal128Array>().unwrap();
        let sum: i128 = p.iter().flatten().sum();
        let want: i128 = (0..1000).filter(|i| i % 23 != 0).map(fixture_price).sum();
        assert_eq!(sum, want);
        assert_eq!(p.null_count(), (0..1000).filter(|i| i % 23 == 0).count());
    }
    if version >= 8 {
        // The star-tree: `qty` summed per country from its records equals the rows' sums.
        let tree = r.star_tree(0).unwrap();
        let uses = vec![
            Some(DimUse {
                grouped: true,
                filter: None,
            }),
            None,
            None,
        ];
        let MetricValues::Int { nonnull, values } = &tree.metrics[1] else {
            panic!("sum(qty) is an integer metric");
        };
        let dict = r.dictionary(1).unwrap().unwrap();
        let crate::reader::Dictionary::Str(dict) = dict.as_ref() else {
            panic!("country is a string dictionary");
        };
        let mut sums = std::collections::BTreeMap::new();
        for rec in tree.select(&uses).unwrap() {
            let rec = rec as usize;
            let id = tree.dimension(0)[rec];
            let country =
                (id != crate::star_tree::NULL_ID).then(|| dict.value(id as usize).to_string());
            *sums.entry(country).or_insert(0i64) += values[rec] * (nonnull[rec] > 0) as i64;
        }
        let mut want = std::collections::BTreeMap::new();
        for i in 0..1000usize {
            let country = (i % 11 != 0).then(|| ["FR", "DE", "US", "IN", "BR"][i % 5].to_string());
            *want.entry(country).or_insert(0i64) += if i % 13 != 0 { (i % 9) as i64 } else { 0 };
        }
        assert_eq!(sums, want);
    }
    if version >= 9 {
        let c = schema.column_index("message").unwrap();
        assert!(r.column_meta(c).text.is_some());
        let text = |q: &str| {
            count(Predicate::TextMatch {
                column: "message".into(),
                search: crate::text::TextSearch::parse(q).unwrap(),
            })
        };
        let want = |f: &dyn Fn(usize) -> bool| {
            (0..1000usize).filter(|&i| i % 29 != 0 && f(i)).count() as u64
        };
        assert_eq!(text("timeout"), want(&|i| i % 5 == 0));
        assert_eq!(text("\"static app\""), want(&|i| i % 4 == 2));
        assert_eq!(
            text("post AND NOT login"),
            want(&|i| i % 3 == 1 && i % 4 != 1)
        );
        assert_eq!(text("ord*"), want(&|i| i % 4 == 3));
        assert_eq!(text("\"api us\"*"), want(&|i| i % 4 == 0));
    }
    if version >= 10 {
        let c = schema.column_index("attrs").unwrap();
        assert!(r.column_meta(c).json.is_some());
        let json = |f: &str| {
            count(Predicate::JsonMatch {
                column: "attrs".into(),
                search: crate::json::JsonSearch::parse(f).unwrap(),
            })
        };
        let want = |f: &dyn Fn(usize) -> bool| {
            (0..1000usize)
                .filter(|&i| i % 31 != 0 && i % 37 != 0 && f(i))
                .count() as u64
        };
        assert_eq!(json("\"$.browser.name\" = 'chrome'"), want(&|i| i % 3 == 1));
        assert_eq!(json("\"$.browser.version\" >= 5"), want(&|i| i % 7 >= 5));
        assert_eq!(json("\"$.tags[*]\" = 't2'"), want(&|i| i % 4 == 3));
        assert_eq!(json("\"$.user.premium\" = true"), want(&|i| i % 4 == 0));
        assert_eq!(
            json("\"$.user\" IS NULL AND \"$.tags[0]\" IS NOT NULL"),
            want(&|i| i % 2 == 1 && i % 4 != 0)
        );
    }
    // The whole content matches a fresh build of the same input, column by column.
    let fresh = SegmentReader::open(Bytes::from(
        build_segment(schema, std::slice::from_ref(batch), &opts()).unwrap(),
    ))
    .unwrap();
    let docs: Vec<u32> = (0..1000).collect();
    for c in 0..schema.columns.len() {
        assert_eq!(
            r.read_column(c, &docs).unwrap().to_data(),
            fresh.read_column(c, &docs).unwrap().to_data(),
            "v{version} column {c}"
        );
    }
    // A few docs per block are read one by one (not by decoding whole blocks): the same
    // values as the whole column at those docs.
    let sparse: Vec<u32> = (0..1000).step_by(37).collect();
    for c in 0..schema.columns.len() {
        let whole = r.read_column(c, &docs).unwrap();
        let some = r.read_column(c, &sparse).unwrap();
        for (i, &d) in sparse.iter().enumerate() {
            let show = |a: &dyn arrow::array::Array, k: usize| {
                arrow::util::display::array_value_to_string(a, k).unwrap()
            };
            assert_eq!(
                show(some.as_ref(), i),
                show(whole.as_ref(), d as usize),
                "v{version} column {c} doc {d}"
            );
        }
    }
}
