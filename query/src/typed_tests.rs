//! DATE and DECIMAL columns through the engine: random filters (pushed into the segment
//! indexes where exact) and aggregates answer what DataFusion answers over the same rows as
//! plain Arrow tables.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, Date32Array, Decimal128Array, StringArray, TimestampMillisecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow::record_batch::RecordBatch;
use basalt_segment::{
    build_segment, BuildOptions, ColumnDef, ColumnType, IndexKind, SegmentReader, SegmentSchema,
};
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::tests::{assert_same, engine_and_reference, explain};

/// Days since the epoch of 2026-01-01.
const DAY0: i32 = 20_454;

fn schema() -> SegmentSchema {
    let mut ts = ColumnDef::new("ts", ColumnType::Timestamp);
    ts.nullable = false;
    SegmentSchema {
        columns: vec![
            ts,
            ColumnDef::new("d", ColumnType::Date).with_index(IndexKind::Range),
            // Few distinct values: dictionary-encoded, with an inverted index.
            ColumnDef::new("price", ColumnType::decimal(12, 2)).with_index(IndexKind::Inverted),
            // Many distinct values: packed, zone maps only.
            ColumnDef::new("amount", ColumnType::decimal(18, 4)),
            ColumnDef::new("g", ColumnType::String),
        ],
        time_column: Some("ts".into()),
        star_trees: Vec::new(),
    }
}

fn batch(rng: &mut StdRng, rows: usize, t0: i64) -> RecordBatch {
    let s = Arc::new(Schema::new(vec![
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
        Field::new("d", DataType::Date32, true),
        Field::new("price", DataType::Decimal128(12, 2), true),
        Field::new("amount", DataType::Decimal128(18, 4), true),
        Field::new("g", DataType::Utf8, true),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(TimestampMillisecondArray::from_iter_values(
            (0..rows).map(|i| t0 + i as i64 * 1000),
        )),
        Arc::new(Date32Array::from_iter((0..rows).map(|_| {
            rng.random_bool(0.9)
                .then(|| DAY0 + rng.random_range(-40..40))
        }))),
        Arc::new(
            Decimal128Array::from_iter((0..rows).map(|_| {
                rng.random_bool(0.9)
                    .then(|| rng.random_range(-50..300) as i128 * 25)
            }))
            .with_precision_and_scale(12, 2)
            .unwrap(),
        ),
        Arc::new(
            Decimal128Array::from_iter((0..rows).map(|_| {
                rng.random_bool(0.9)
                    .then(|| rng.random_range(-99_999_999_999_999i64..99_999_999_999_999) as i128)
            }))
            .with_precision_and_scale(18, 4)
            .unwrap(),
        ),
        Arc::new(StringArray::from_iter((0..rows).map(|_| {
            rng.random_bool(0.9)
                .then(|| ["a", "b", "c"][rng.random_range(0..3)].to_string())
        }))),
    ];
    RecordBatch::try_new(s, cols).unwrap()
}

fn date_literal(rng: &mut StdRng) -> String {
    let day = DAY0 + rng.random_range(-45..45);
    let d =
        chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap() + chrono::Duration::days(day as i64);
    match rng.random_range(0..3) {
        0 => format!("DATE '{d}'"),
        // A timestamp literal, sometimes inside a day: compared as a timestamp.
        1 => format!("TIMESTAMP '{d} {:02}:00:00'", rng.random_range(0..2) * 12),
        _ => format!("'{d}'"),
    }
}

fn decimal_literal(rng: &mut StdRng) -> String {
    let cents = rng.random_range(-1_500..8_000i64);
    match rng.random_range(0..4) {
        // Exact at the column's scale.
        0 => {
            let sign = if cents < 0 { "-" } else { "" };
            format!("{sign}{}.{:02}", cents.abs() / 100, cents.abs() % 100)
        }
        // Between two stored values (three decimals).
        1 => format!("{:.3}", cents as f64 / 100.0 + 0.005),
        // An integer.
        2 => format!("{}", cents / 100),
        // A typed decimal literal.
        _ => format!(
            "CAST('{:.4}' AS DECIMAL(10, 4))",
            cents as f64 / 100.0 + 0.0025
        ),
    }
}

fn leaf(rng: &mut StdRng) -> String {
    let op = ["=", "<>", "<", "<=", ">", ">="][rng.random_range(0..6)];
    match rng.random_range(0..8) {
        0 => format!("d {op} {}", date_literal(rng)),
        1 => format!("d BETWEEN {} AND {}", date_literal(rng), date_literal(rng)),
        2 => format!("d IN ({}, {})", date_literal(rng), date_literal(rng)),
        3 => format!("price {op} {}", decimal_literal(rng)),
        4 => format!(
            "price BETWEEN {} AND {}",
            decimal_literal(rng),
            decimal_literal(rng)
        ),
        5 => format!(
            "price IN ({}, {}, {})",
            decimal_literal(rng),
            decimal_literal(rng),
            decimal_literal(rng)
        ),
        6 => format!("amount {op} {}", decimal_literal(rng)),
        _ => [
            "d IS NULL",
            "price IS NOT NULL",
            "g = 'a'",
            "amount IS NULL",
        ][rng.random_range(0..4)]
        .to_string(),
    }
}

fn filter(rng: &mut StdRng, depth: u32) -> String {
    if depth == 0 || rng.random_bool(0.4) {
        return leaf(rng);
    }
    let (a, b) = (filter(rng, depth - 1), filter(rng, depth - 1));
    match rng.random_range(0..3) {
        0 => format!("({a} AND {b})"),
        1 => format!("({a} OR {b})"),
        _ => format!("NOT ({a})"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn date_and_decimal_columns_answer_like_datafusion_over_arrow() {
    let mut rng = StdRng::seed_from_u64(0xDA7E);
    let t0 = 1_767_225_600_000i64;
    let opts = BuildOptions {
        block_rows: 128,
        range_buckets: 8,
        ..BuildOptions::default()
    };
    let (mut batches, mut segments) = (Vec::new(), Vec::new());
    for s in 0..3 {
        let b = batch(&mut rng, 500 + s * 200, t0 + s as i64 * 3_600_000);
        let bytes = build_segment(&schema(), std::slice::from_ref(&b), &opts).unwrap();
        segments.push(Arc::new(SegmentReader::open(Bytes::from(bytes)).unwrap()));
        batches.push(b);
    }
    let (engine, reference) = engine_and_reference(schema(), segments, &batches);

    let shapes = [
        "SELECT count(*) FROM t WHERE {f}",
        "SELECT ts, d, price, amount FROM t WHERE {f}",
        "SELECT sum(price), sum(amount), avg(price), min(d), max(d), min(amount) FROM t WHERE {f}",
        "SELECT d, count(*), sum(price) FROM t WHERE {f} GROUP BY d",
        "SELECT g, sum(amount), max(price) FROM t WHERE {f} GROUP BY g",
        "SELECT price, count(*) FROM t WHERE {f} GROUP BY price",
        "SELECT date_trunc('month', d), sum(price * 2) FROM t WHERE {f} GROUP BY 1",
        // TPC-H Q01's shape: a common subexpression DataFusion projects once.
        "SELECT g, sum(price * (1 - amount)), sum(price * (1 - amount) * (1 + price)), \
         avg(amount), count(*) FROM t WHERE {f} GROUP BY g",
    ];
    for i in 0..300 {
        let f = filter(&mut rng, 2);
        let sql = shapes[i % shapes.len()].replace("{f}", &f);
        assert_same(&engine, &reference, &sql).await;
    }

    // The common subexpression's projection runs inside the scan's own aggregation.
    let q01 = "SELECT g, d, sum(price * (1 - amount)) AS a, \
               sum(price * (1 - amount) * (1 + price)) AS b, count(*) FROM t \
               WHERE d <= DATE '2026-01-20' GROUP BY g, d ORDER BY g, d";
    let plan = explain(&engine, q01).await;
    assert!(plan.contains("SegmentAggregateExec"), "{plan}");
    assert!(!plan.contains("ProjectionExec: expr=[__common"), "{plan}");
    assert_same(&engine, &reference, q01).await;

    // Exact literals, and ones between two stored values, are answered by the indexes.
    for sql in [
        "SELECT count(*) FROM t WHERE d >= DATE '2026-01-10' AND d < DATE '2026-02-01'",
        "SELECT count(*) FROM t WHERE price BETWEEN 1.25 AND 20",
        "SELECT count(*) FROM t WHERE price < 12.345",
        "SELECT count(*) FROM t WHERE amount >= CAST('1.00005' AS DECIMAL(10, 5))",
        "SELECT count(*) FROM t WHERE d > TIMESTAMP '2026-01-05 12:00:00'",
    ] {
        let plan = explain(&engine, sql).await;
        assert!(
            plan.contains("Compare") || plan.contains("Between"),
            "{sql}:\n{plan}"
        );
        assert!(!plan.contains("FilterExec"), "{sql}:\n{plan}");
        assert_same(&engine, &reference, sql).await;
    }
    // Sums are exact: DECIMAL in, DECIMAL out.
    let out = engine
        .execute(
            "SELECT sum(price) FROM t",
            &crate::engine::QueryLimits::default(),
        )
        .await
        .unwrap();
    assert!(
        matches!(out.schema.field(0).data_type(), DataType::Decimal128(_, 2)),
        "{:?}",
        out.schema
    );
}
