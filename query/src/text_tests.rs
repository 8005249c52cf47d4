//! `TEXT_MATCH` against DataFusion: filters, projections and negations of text queries over
//! segments (with text indexes, and one built without, as a real-time chunk is) answer
//! exactly what DataFusion's case-insensitive regular expressions (`~*`) mean over the same
//! rows as plain Arrow tables; bad queries are refused at planning.

use std::sync::Arc;

use arrow::array::{ArrayRef, Int32Array, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use basalt_segment::{
    build_segment, BuildOptions, ColumnDef, ColumnType, IndexKind, SegmentReader, SegmentSchema,
};
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::engine::QueryLimits;
use crate::tests::{assert_pairs, engine_and_reference, explain, segments_last_unindexed};

const T0: i64 = 1_767_225_600_000; // 2026-01-01
const ROWS: usize = 2_000;
const WORDS: &[&str] = &[
    "error", "errors", "timeout", "time", "disk", "full", "login", "logout", "failed", "ok",
    "retry", "user42", "GET", "api", "écran",
];
const SEPARATORS: &[&str] = &[" ", ", ", "/", ".", "-", ": ", "_"];
const AGENTS: &[&str] = &[
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/120.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_1) Safari/605.1",
    "Mozilla/5.0 (Linux; Android 14) Chrome/119.0 Mobile",
    "curl/8.4.0",
    "python-requests/2.31",
];

fn text_schema() -> SegmentSchema {
    let mut ts = ColumnDef::new("ts", ColumnType::Timestamp);
    ts.nullable = false;
    SegmentSchema {
        columns: vec![
            ts,
            // Near-unique lines: raw strings.
            ColumnDef::new("msg", ColumnType::String).with_index(IndexKind::Text),
            // Few values: a dictionary.
            ColumnDef::new("agent", ColumnType::String)
                .with_index(IndexKind::Text)
                .with_index(IndexKind::Inverted),
            ColumnDef::new("n", ColumnType::Int),
        ],
        time_column: Some("ts".into()),
        star_trees: Vec::new(),
    }
}

fn line(rng: &mut StdRng) -> String {
    let mut s = String::new();
    for i in 0..rng.random_range(1..9) {
        if i > 0 {
            s.push_str(SEPARATORS[rng.random_range(0..SEPARATORS.len())]);
        }
        let w = WORDS[rng.random_range(0..WORDS.len())];
        match rng.random_range(0..3) {
            0 => s.push_str(&w.to_uppercase()),
            _ => s.push_str(w),
        }
    }
    // A number makes most lines distinct.
    s.push_str(&format!(" #{}", rng.random_range(0..100_000)));
    s
}

fn batch(rng: &mut StdRng, t0: i64) -> RecordBatch {
    let s = Arc::new(Schema::new(vec![
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
        Field::new("msg", DataType::Utf8, true),
        Field::new("agent", DataType::Utf8, true),
        Field::new("n", DataType::Int32, true),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(TimestampMillisecondArray::from_iter_values(
            (0..ROWS).map(|i| t0 + i as i64 * 1000),
        )),
        Arc::new(StringArray::from_iter(
            (0..ROWS).map(|_| rng.random_bool(0.9).then(|| line(rng))),
        )),
        Arc::new(StringArray::from_iter((0..ROWS).map(|_| {
            rng.random_bool(0.95)
                .then(|| AGENTS[rng.random_range(0..AGENTS.len())].to_string())
        }))),
        Arc::new(Int32Array::from_iter_values(
            (0..ROWS).map(|_| rng.random_range(0..20)),
        )),
    ];
    RecordBatch::try_new(s, cols).unwrap()
}

const W: &str = r"[\p{Alphabetic}\p{N}]";
const NW: &str = r"[^\p{Alphabetic}\p{N}]";

/// Text queries and the regular expressions (matched case-insensitively) meaning the same.
fn cases() -> Vec<(&'static str, String)> {
    vec![
        ("timeout", format!("(^|{NW})timeout({NW}|$)")),
        ("ERROR", format!("(^|{NW})error({NW}|$)")),
        ("\"disk full\"", format!("(^|{NW})disk{NW}+full({NW}|$)")),
        ("time*", format!("(^|{NW})time")),
        ("f?il*", format!("(^|{NW})f{W}il{W}*({NW}|$)")),
        ("*out", format!("(^|{NW}){W}*out({NW}|$)")),
        ("\"disk fu\"*", format!("(^|{NW})disk{NW}+fu")),
        ("user42", format!("(^|{NW})user42({NW}|$)")),
        ("écran", format!("(^|{NW})écran({NW}|$)")),
        ("chrome", format!("(^|{NW})chrome({NW}|$)")),
        ("\"android 14\"", format!("(^|{NW})android{NW}+14({NW}|$)")),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_match_answers_like_datafusion_regexes() {
    let mut rng = StdRng::seed_from_u64(0x7E47);
    let schema = text_schema();
    let batches: Vec<RecordBatch> = (0..3)
        .map(|s| batch(&mut rng, T0 + (s * ROWS) as i64 * 1000))
        .collect();
    let segments = segments_last_unindexed(&schema, &batches);
    let indexed: Vec<bool> = segments
        .iter()
        .map(|s| s.column_meta(1).text.is_some())
        .collect();
    assert_eq!(indexed, [true, true, false]);
    let (engine, reference) = engine_and_reference(schema, segments, &batches);
    // The filter is the segments' (their text indexes), not DataFusion's.
    let plan = explain(
        &engine,
        "SELECT count(*) FROM t WHERE TEXT_MATCH(msg, 'error') AND n > 3",
    )
    .await;
    assert!(!plan.contains("FilterExec"), "{plan}");
    let cases = cases();
    let mut sqls: Vec<(String, String)> = Vec::new();
    for (i, (q, re)) in cases.iter().enumerate() {
        let (q2, re2) = &cases[(i * 7 + 3) % cases.len()];
        for col in ["msg", "agent"] {
            let m = |q: &str| format!("TEXT_MATCH({col}, '{}')", q.replace('\'', "''"));
            let r = |re: &str| format!("{col} ~* '{re}'");
            sqls.push((
                format!("SELECT count(*) FROM t WHERE {}", m(q)),
                format!("SELECT count(*) FROM t WHERE {}", r(re)),
            ));
            sqls.push((
                format!("SELECT count(*) FROM t WHERE NOT {}", m(q)),
                format!("SELECT count(*) FROM t WHERE NOT {}", r(re)),
            ));
            // Boolean operators inside the query, against the same in SQL.
            sqls.push((
                format!(
                    "SELECT n, count(*) FROM t WHERE {} GROUP BY n",
                    m(&format!("({q}) AND NOT ({q2})"))
                ),
                format!(
                    "SELECT n, count(*) FROM t WHERE {} AND NOT {} GROUP BY n",
                    r(re),
                    r(re2)
                ),
            ));
            sqls.push((
                format!(
                    "SELECT count(*) FROM t WHERE {}",
                    m(&format!("({q}) OR ({q2})"))
                ),
                format!("SELECT count(*) FROM t WHERE {} OR {}", r(re), r(re2)),
            ));
            sqls.push((
                format!("SELECT count(*) FROM t WHERE {}", m(&format!("NOT ({q})"))),
                format!("SELECT count(*) FROM t WHERE NOT {}", r(re)),
            ));
            // Combined with other filters, an OR across columns, and a time range that
            // cuts a segment.
            sqls.push((
                format!(
                    "SELECT ts, n FROM t WHERE {} AND n > 12 AND ts >= to_timestamp_millis({})",
                    m(q),
                    T0 + 1_500_000
                ),
                format!(
                    "SELECT ts, n FROM t WHERE {} AND n > 12 AND ts >= to_timestamp_millis({})",
                    r(re),
                    T0 + 1_500_000
                ),
            ));
            sqls.push((
                format!("SELECT count(*) FROM t WHERE {} OR n = 3", m(q)),
                format!("SELECT count(*) FROM t WHERE {} OR n = 3", r(re)),
            ));
            // In the select list: evaluated row by row by the function.
            sqls.push((
                format!("SELECT {} AS hit, count(*) FROM t GROUP BY 1", m(q)),
                format!("SELECT {} AS hit, count(*) FROM t GROUP BY 1", r(re)),
            ));
        }
    }
    let nonzero = assert_pairs(&engine, &reference, &sqls).await;
    assert!(
        nonzero > sqls.len() / 2,
        "most queries match rows: {nonzero}/{}",
        sqls.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_text_queries_are_refused_at_planning() {
    let mut rng = StdRng::seed_from_u64(1);
    let schema = text_schema();
    let b = batch(&mut rng, T0);
    let bytes = build_segment(&schema, std::slice::from_ref(&b), &BuildOptions::default()).unwrap();
    let seg = Arc::new(SegmentReader::open(Bytes::from(bytes)).unwrap());
    let (engine, _) = engine_and_reference(schema, vec![seg], &[b]);
    for (sql, why) in [
        (
            "SELECT count(*) FROM t WHERE TEXT_MATCH(msg, 'title:error')",
            "field names",
        ),
        (
            "SELECT count(*) FROM t WHERE TEXT_MATCH(msg, '(error')",
            "syntax error",
        ),
        (
            "SELECT count(*) FROM t WHERE TEXT_MATCH(msg, agent)",
            "constant string",
        ),
        (
            "SELECT count(*) FROM t WHERE TEXT_MATCH(n, 'error')",
            "string column",
        ),
        // Nothing to scan still checks the query.
        (
            "SELECT count(*) FROM t WHERE n > 100 AND TEXT_MATCH(msg, '\"a b\"~3')",
            "slop",
        ),
    ] {
        let err = engine
            .execute(sql, &QueryLimits::default())
            .await
            .err()
            .unwrap_or_else(|| panic!("{sql} ran"));
        assert!(err.to_string().contains(why), "{sql}: {err}");
    }
}
