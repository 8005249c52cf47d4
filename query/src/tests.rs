//! Differential test: the same random filters and group-bys over segments (through the
//! index pushdown) and over plain Arrow batches in a stock DataFusion `MemTable` must return
//! the same rows.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Int32Array, Int64Array, StringArray,
    TimestampMillisecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use basalt_segment::{
    build_segment, BuildOptions, ColumnDef, ColumnType, IndexKind, SegmentReader, SegmentSchema,
};
use bytes::Bytes;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::engine::{QueryEngine, QueryLimits};
use crate::table::{TableSnapshot, TableSource};

#[derive(Debug)]
pub(crate) struct Fixed(pub(crate) TableSnapshot);

impl TableSource for Fixed {
    fn table_names(&self) -> Vec<String> {
        vec![self.0.name.clone()]
    }
    fn snapshot(&self, name: &str) -> Result<Option<TableSnapshot>, crate::QueryError> {
        Ok((name == self.0.name).then(|| self.0.clone()))
    }
    fn direct_snapshot(&self, name: &str) -> Result<Option<TableSnapshot>, crate::QueryError> {
        self.snapshot(name)
    }
}

const CITIES: &[&str] = &[
    "Paris", "Pune", "Perth", "Oslo", "Osaka", "Lima", "Lyon", "Quito",
];

pub(crate) fn schema() -> SegmentSchema {
    let mut ts = ColumnDef::new("ts", ColumnType::Timestamp);
    ts.nullable = false;
    SegmentSchema {
        columns: vec![
            ts,
            ColumnDef::new("city", ColumnType::String).with_index(IndexKind::Inverted),
            ColumnDef::new("tag", ColumnType::String),
            ColumnDef::new("n", ColumnType::Int).with_index(IndexKind::Sorted),
            ColumnDef::new("big", ColumnType::Long),
            ColumnDef::new("lat", ColumnType::Double).with_index(IndexKind::Range),
            ColumnDef::new("ok", ColumnType::Boolean),
            // Near-unique and unindexed: stored as raw strings.
            ColumnDef::new("uid", ColumnType::String),
        ],
        time_column: Some("ts".into()),
        star_trees: Vec::new(),
    }
}

pub(crate) fn batch(rng: &mut StdRng, rows: usize, t0: i64) -> RecordBatch {
    let s = Arc::new(Schema::new(vec![
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
        Field::new("city", DataType::Utf8, true),
        Field::new("tag", DataType::Utf8, true),
        Field::new("n", DataType::Int32, true),
        Field::new("big", DataType::Int64, true),
        Field::new("lat", DataType::Float64, true),
        Field::new("ok", DataType::Boolean, true),
        Field::new("uid", DataType::Utf8, true),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(TimestampMillisecondArray::from_iter_values(
            (0..rows).map(|i| t0 + i as i64 * 1000),
        )),
        Arc::new(StringArray::from_iter((0..rows).map(|_| {
            rng.random_bool(0.9)
                .then(|| CITIES[rng.random_range(0..CITIES.len())].to_string())
        }))),
        Arc::new(StringArray::from_iter((0..rows).map(|_| {
            rng.random_bool(0.8)
                .then(|| format!("t{}", rng.random_range(0..500)))
        }))),
        Arc::new(Int32Array::from_iter(
            (0..rows).map(|_| rng.random_bool(0.95).then(|| rng.random_range(0..20))),
        )),
        Arc::new(Int64Array::from_iter((0..rows).map(|_| {
            rng.random_bool(0.9)
                .then(|| rng.random_range(-1_000_000..1_000_000))
        }))),
        Arc::new(Float64Array::from_iter((0..rows).map(|_| {
            rng.random_bool(0.9)
                .then(|| (rng.random_range(0.0..500.0f64) * 4.0).round() / 4.0)
        }))),
        Arc::new(BooleanArray::from_iter(
            (0..rows).map(|_| rng.random_bool(0.9).then(|| rng.random_bool(0.3))),
        )),
        Arc::new(StringArray::from_iter((0..rows).map(|_| {
            rng.random_bool(0.9)
                .then(|| format!("{:06x}", rng.random_range(0..0x1000000)))
        }))),
    ];
    RecordBatch::try_new(s, cols).unwrap()
}

fn leaf(rng: &mut StdRng, t0: i64) -> String {
    let ops = ["=", "!=", "<", "<=", ">", ">="];
    let op = ops[rng.random_range(0..ops.len())];
    match rng.random_range(0..17) {
        15 | 16 => format!(
            "{} {}{}LIKE '{}'",
            ["city", "tag", "uid"][rng.random_range(0..3)],
            if rng.random_bool(0.3) { "NOT " } else { "" },
            if rng.random_bool(0.3) { "I" } else { "" },
            like_pattern(rng)
        ),
        12 => format!("uid {op} '{:06x}'", rng.random_range(0..0x1000000)),
        13 => format!(
            "uid {}LIKE '{:x}%'",
            if rng.random_bool(0.3) { "NOT " } else { "" },
            rng.random_range(0..16)
        ),
        14 => format!(
            "uid IS {}NULL",
            if rng.random_bool(0.5) { "NOT " } else { "" }
        ),
        0 => format!("city {op} '{}'", CITIES[rng.random_range(0..CITIES.len())]),
        1 => format!(
            "city IN ('{}', '{}', 'Nowhere')",
            CITIES[rng.random_range(0..8)],
            CITIES[rng.random_range(0..8)]
        ),
        2 => format!(
            "city LIKE '{}%'",
            ["P", "O", "Ly", "Q", "X"][rng.random_range(0..5)]
        ),
        3 => format!("tag {op} 't{}'", rng.random_range(0..600)),
        4 => format!("n {op} {}", rng.random_range(-2..22)),
        5 => format!(
            "n BETWEEN {} AND {}",
            rng.random_range(0..10),
            rng.random_range(5..20)
        ),
        6 => format!("big {op} {}", rng.random_range(-1_100_000..1_100_000)),
        7 => format!("lat {op} {}", rng.random_range(0..2000) as f64 / 4.0),
        8 => format!(
            "lat BETWEEN {} AND {}",
            rng.random_range(0..250),
            rng.random_range(200..520)
        ),
        9 => format!(
            "ts {op} TIMESTAMP '{}'",
            chrono_fmt(t0 + rng.random_range(0..2_000_000))
        ),
        10 => format!(
            "{} IS {}NULL",
            ["city", "tag", "n", "lat", "ok"][rng.random_range(0..5)],
            if rng.random_bool(0.5) { "NOT " } else { "" }
        ),
        _ => format!("ok = {}", rng.random_bool(0.5)),
    }
}

/// A `LIKE` pattern from wildcards, escapes, letters of both cases and pieces of the data
/// (dictionary and raw columns must answer exactly what DataFusion's kernel answers).
fn like_pattern(rng: &mut StdRng) -> String {
    const PIECES: &[&str] = &[
        "%", "%%", "_", "\\%", "\\_", "\\\\", "\\", "P", "p", "a", "is", "t1", "0", "f", "Ly", "o",
        "''",
    ];
    (0..rng.random_range(0..6))
        .map(|_| PIECES[rng.random_range(0..PIECES.len())])
        .collect()
}

fn chrono_fmt(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .expect("in range")
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

pub(crate) fn filter(rng: &mut StdRng, t0: i64, depth: u32) -> String {
    if depth == 0 || rng.random_bool(0.4) {
        return leaf(rng, t0);
    }
    match rng.random_range(0..3) {
        0 => format!(
            "({} AND {})",
            filter(rng, t0, depth - 1),
            filter(rng, t0, depth - 1)
        ),
        1 => format!(
            "({} OR {})",
            filter(rng, t0, depth - 1),
            filter(rng, t0, depth - 1)
        ),
        _ => format!("NOT ({})", filter(rng, t0, depth - 1)),
    }
}

pub(crate) fn render(batches: &[RecordBatch]) -> Vec<String> {
    let opts = FormatOptions::default().with_null("NULL");
    let mut rows = Vec::new();
    for b in batches {
        let cols: Vec<ArrayRef> = b
            .columns()
            .iter()
            .map(|c| match c.data_type() {
                DataType::Dictionary(_, v) => arrow::compute::cast(c, v).unwrap(),
                _ => c.clone(),
            })
            .collect();
        let fmts: Vec<_> = cols
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &opts).unwrap())
            .collect();
        for r in 0..b.num_rows() {
            rows.push(
                fmts.iter()
                    .map(|f| f.value(r).to_string())
                    .collect::<Vec<_>>()
                    .join("|"),
            );
        }
    }
    rows.sort();
    rows
}

/// A segment of `schema()` holding `b`, built with the default options.
fn default_segment(b: &RecordBatch) -> Arc<SegmentReader> {
    let bytes = build_segment(&schema(), std::slice::from_ref(b), &BuildOptions::default());
    Arc::new(SegmentReader::open(Bytes::from(bytes.unwrap())).unwrap())
}

/// Asserts that `sql` answers the same rows on `engine` (segments) as on `reference`
/// (DataFusion over plain Arrow tables).
/// An engine over table `t` made of `segments`, and DataFusion over the same rows as plain
/// Arrow `batches` (the reference the differential tests compare with).
pub(crate) fn engine_and_reference(
    schema: SegmentSchema,
    segments: Vec<Arc<SegmentReader>>,
    batches: &[RecordBatch],
) -> (QueryEngine, SessionContext) {
    let engine = QueryEngine::new(Arc::new(Fixed(TableSnapshot {
        valid: Vec::new(),
        name: "t".into(),
        schema,
        segments,
    })));
    let reference = SessionContext::new();
    let mem = MemTable::try_new(batches[0].schema(), vec![batches.to_vec()]).unwrap();
    reference.register_table("t", Arc::new(mem)).unwrap();
    (engine, reference)
}

pub(crate) async fn assert_same(engine: &QueryEngine, reference: &SessionContext, sql: &str) {
    let got = engine
        .execute(sql, &QueryLimits::default())
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let want = reference.sql(sql).await.unwrap().collect().await.unwrap();
    assert_eq!(render(&got.batches), render(&want), "{sql}");
}

/// Segments of `batches` in 256-row blocks, the last built without text and JSON indexes, as
/// a real-time chunk is (its values are tested one by one).
pub(crate) fn segments_last_unindexed(
    schema: &SegmentSchema,
    batches: &[RecordBatch],
) -> Vec<Arc<SegmentReader>> {
    let last = batches.len().saturating_sub(1);
    batches
        .iter()
        .enumerate()
        .map(|(s, b)| {
            let opts = BuildOptions {
                block_rows: 256,
                text_indexes: s < last,
                ..BuildOptions::default()
            };
            let bytes = build_segment(schema, std::slice::from_ref(b), &opts).unwrap();
            Arc::new(SegmentReader::open(Bytes::from(bytes)).unwrap())
        })
        .collect()
}

/// Each engine query of `pairs` answers what its reference query answers on the reference;
/// returns how many answers are not a single `0` (so a caller can check most match rows).
pub(crate) async fn assert_pairs(
    engine: &QueryEngine,
    reference: &SessionContext,
    pairs: &[(String, String)],
) -> usize {
    let mut nonzero = 0;
    for (got_sql, want_sql) in pairs {
        let want = render(
            &reference
                .sql(want_sql)
                .await
                .unwrap_or_else(|e| panic!("{want_sql}: {e}"))
                .collect()
                .await
                .unwrap_or_else(|e| panic!("{want_sql}: {e}")),
        );
        let got = engine
            .execute(got_sql, &QueryLimits::default())
            .await
            .unwrap_or_else(|e| panic!("{got_sql}: {e}"));
        assert_eq!(render(&got.batches), want, "{got_sql}\nagainst {want_sql}");
        if want.first().is_some_and(|r| r != "0") {
            nonzero += 1;
        }
    }
    nonzero
}

/// The EXPLAIN output of `sql`, one line per row.
pub(crate) async fn explain(engine: &QueryEngine, sql: &str) -> String {
    let out = engine
        .execute(&format!("EXPLAIN {sql}"), &QueryLimits::default())
        .await
        .unwrap();
    render(&out.batches).join("\n")
}

/// Grouped counts over a column with an inverted index (`city`) come from its index entries,
/// not its rows: the same answers as DataFusion over the same rows, under random filters,
/// and the index is what answered a count without a filter. (`n` has nulls, so no sorted
/// runs, and no inverted index: its rows answer. Counts from sorted runs are checked in
/// `basalt_segment`'s `value_counts_match_the_rows`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grouped_counts_from_the_index_answer_like_the_rows() {
    let mut rng = StdRng::seed_from_u64(0xC0_0475);
    let t0 = 1_767_225_600_000i64; // 2026-01-01
    let batches: Vec<RecordBatch> = (0..3)
        .map(|s| batch(&mut rng, 4000 + s * 1500, t0 + s as i64 * 10_000_000))
        .collect();
    let segments = batches.iter().map(default_segment).collect();
    let (engine, reference) = engine_and_reference(schema(), segments, &batches);
    for (sql, lookups) in [
        ("SELECT city, count(*) FROM t GROUP BY city", 3),
        (
            "SELECT city, count(*) AS c, count(*) AS d FROM t GROUP BY city ORDER BY c",
            3,
        ),
        ("SELECT n, count(*) FROM t GROUP BY n", 0),
    ] {
        let out = engine.execute(sql, &QueryLimits::default()).await.unwrap();
        assert_eq!(out.stats.index_lookups, lookups, "{sql}: one per segment");
        assert_same(&engine, &reference, sql).await;
    }
    let shapes = [
        "SELECT city, count(*) FROM t WHERE {f} GROUP BY city",
        "SELECT n, count(*) AS c FROM t WHERE {f} GROUP BY n",
        "SELECT city, count(*) AS c FROM t WHERE {f} GROUP BY city ORDER BY c DESC, city LIMIT 3",
    ];
    for i in 0..150 {
        let f = filter(&mut rng, t0, 2);
        assert_same(
            &engine,
            &reference,
            &shapes[i % shapes.len()].replace("{f}", &f),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_answer_like_datafusion_over_arrow() {
    let mut rng = StdRng::seed_from_u64(0xBA5A17);
    let t0 = 1_767_225_600_000i64; // 2026-01-01
    let opts = BuildOptions {
        block_rows: 256,
        range_buckets: 8,
        ..BuildOptions::default()
    };
    let mut batches = Vec::new();
    let mut segments = Vec::new();
    for s in 0..4 {
        let b = batch(&mut rng, 700 + s * 150, t0 + s as i64 * 600_000);
        let bytes = build_segment(&schema(), std::slice::from_ref(&b), &opts).unwrap();
        segments.push(Arc::new(SegmentReader::open(Bytes::from(bytes)).unwrap()));
        batches.push(b);
    }
    assert!(segments.iter().all(|r| matches!(
        r.column_meta(7).encoding,
        basalt_segment::layout::Encoding::RawStrings
    )));
    let snapshot = TableSnapshot {
        valid: Vec::new(),
        name: "t".into(),
        schema: schema(),
        segments,
    };
    let engine = QueryEngine::new(Arc::new(Fixed(snapshot)));
    let reference = SessionContext::new();
    let mem = MemTable::try_new(batches[0].schema(), vec![batches.clone()]).unwrap();
    reference.register_table("t", Arc::new(mem)).unwrap();

    let shapes = [
        "SELECT count(*) FROM t WHERE {f}",
        "SELECT ts, city, tag, n, big, lat, ok, uid FROM t WHERE {f}",
        // Raw string keys and sketches (no dictionary).
        "SELECT uid, count(*), max(n) FROM t WHERE {f} GROUP BY uid",
        "SELECT city, approx_distinct(uid), min(uid) FROM t WHERE {f} GROUP BY city",
        "SELECT city, count(*), min(lat), max(big) FROM t WHERE {f} GROUP BY city",
        "SELECT n, ok, count(*), sum(big) FROM t WHERE {f} GROUP BY n, ok",
        "SELECT tag, count(DISTINCT city) FROM t WHERE {f} GROUP BY tag",
        // Aggregation inside the scan: several dictionary keys (dense combinations), a raw
        // column key, computed keys, accumulators without a groups form.
        "SELECT city, tag, avg(lat), count(big), min(ts) FROM t WHERE {f} GROUP BY city, tag",
        "SELECT tag, big, count(*) FROM t WHERE {f} GROUP BY tag, big",
        "SELECT date_trunc('minute', ts), count(*), sum(lat) FROM t WHERE {f} GROUP BY 1",
        // Blocks within one hour take their key from the zone map without decoding `ts`.
        "SELECT date_trunc('hour', ts), city, count(*), max(big) FROM t WHERE {f} GROUP BY 1, 2",
        "SELECT ok, big % 7, approx_distinct(tag), max(city) FROM t WHERE {f} GROUP BY ok, big % 7",
    ];
    let mut checked = 0;
    for i in 0..300 {
        let f = filter(&mut rng, t0, 3);
        let sql = shapes[i % shapes.len()].replace("{f}", &f);
        assert_same(&engine, &reference, &sql).await;
        checked += 1;
    }
    assert_eq!(checked, 300);
    let plan = explain(
        &engine,
        "SELECT city, count(*), DISTINCTCOUNTHLL(tag) FROM t GROUP BY city",
    )
    .await;
    assert!(plan.contains("SegmentAggregateExec"), "{plan}");
    assert!(!plan.contains("AggregateExec: mode"), "{plan}");
    // Groups held inside the scan count against the query's memory limit.
    let tiny = QueryLimits {
        memory_limit: 1 << 12,
        ..QueryLimits::default()
    };
    let e = engine
        .execute("SELECT big, count(*) FROM t GROUP BY big", &tiny)
        .await
        .unwrap_err();
    assert!(matches!(e, crate::QueryError::Memory(_)), "{e}");
}

/// More groups than one output batch holds, sorted above the scan's aggregation: the same
/// rows as DataFusion over Arrow, within a small memory limit (each output batch carries only
/// the dictionary values it uses, so a sort's merge does not copy every group's value into
/// every batch).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_groups_sort_within_a_small_memory_limit() {
    let mut rng = StdRng::seed_from_u64(7);
    let t0 = 1_767_225_600_000i64;
    let mut batches = Vec::new();
    let mut segments = Vec::new();
    for s in 0..3 {
        let mut b = batch(&mut rng, 60_000, t0 + s as i64 * 60_000_000);
        // `tag` with 150,000 values: about 130,000 groups with `city`, 16 output batches.
        let tags: ArrayRef = Arc::new(StringArray::from_iter(
            (0..b.num_rows()).map(|_| Some(format!("k{:06}", rng.random_range(0..150_000)))),
        ));
        let mut cols = b.columns().to_vec();
        cols[2] = tags;
        b = RecordBatch::try_new(b.schema(), cols).unwrap();
        segments.push(default_segment(&b));
        batches.push(b);
    }
    let (engine, reference) = engine_and_reference(schema(), segments, &batches);
    let limits = QueryLimits {
        memory_limit: 128 << 20,
        ..QueryLimits::default()
    };
    for sql in [
        "SELECT tag, city, count(*) AS n FROM t GROUP BY tag, city ORDER BY n DESC, tag, city",
        "SELECT tag, max(lat) AS m FROM t GROUP BY tag ORDER BY m, tag",
    ] {
        let plan = explain(&engine, sql).await;
        assert!(plan.contains("SegmentAggregateExec"), "{plan}");
        let got = engine
            .execute(sql, &limits)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        assert!(got.num_rows() > 8192, "{sql}: {} groups", got.num_rows());
        let want = reference.sql(sql).await.unwrap().collect().await.unwrap();
        assert_eq!(render(&got.batches), render(&want), "{sql}");
    }
}

/// A segment aggregation stops once the query's deadline (its session's `QueryBudget`) has
/// passed: its workers check it as they check the cancel flag, without waiting for the
/// abort to reach the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_aggregation_stops_at_the_deadline() {
    use datafusion::execution::TaskContext;
    use datafusion::physical_plan::collect;
    use datafusion::prelude::SessionConfig;
    use std::time::{Duration, Instant};

    let mut rng = StdRng::seed_from_u64(11);
    let t0 = 1_767_225_600_000i64;
    let batches: Vec<RecordBatch> = (0..3)
        .map(|s| batch(&mut rng, 20_000, t0 + s as i64 * 60_000_000))
        .collect();
    let segments = batches.iter().map(default_segment).collect();
    let (engine, _) = engine_and_reference(schema(), segments, &batches);
    let sql = "SELECT city, count(*), max(big) FROM t GROUP BY city";
    let plan = engine.physical_plan(sql).await.unwrap();
    let shown = datafusion::physical_plan::displayable(plan.as_ref())
        .indent(true)
        .to_string();
    assert!(shown.contains("SegmentAggregateExec"), "{shown}");
    let with_deadline = |deadline| {
        let budget = crate::engine::QueryBudget {
            deadline,
            max_rows: usize::MAX,
            memory_limit: usize::MAX,
            use_star_tree: true,
        };
        Arc::new(
            TaskContext::default()
                .with_session_config(SessionConfig::new().with_extension(Arc::new(budget))),
        )
    };
    // A plan runs once (its exchanges keep state): one per run.
    let late = with_deadline(Instant::now() + Duration::from_secs(600));
    let rows: usize = collect(plan, late)
        .await
        .unwrap()
        .iter()
        .map(|b| b.num_rows())
        .sum();
    assert!(rows > 0);
    let past = with_deadline(Instant::now());
    let plan = engine.physical_plan(sql).await.unwrap();
    let e = collect(plan, past).await.unwrap_err();
    assert!(e.to_string().contains("query cancelled"), "{e}");
}

/// A key with more values per segment than `segment_agg`'s split threshold, grouped without
/// a filter: the workers split the key's values instead of the segments (each reads every
/// segment and keeps the rows whose key it owns). The same rows as DataFusion, NULL keys
/// included, for 2 and 3 workers, and every doc counted once in the stats: with the values
/// owned by range and numbered by merging the sorted dictionaries, and (an upsert table's
/// valid-docs bitmaps, here every doc) owned by hash and interned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn high_cardinality_keys_split_between_workers() {
    let mut rng = StdRng::seed_from_u64(11);
    let t0 = 1_767_225_600_000i64;
    let (mut batches, mut segments) = (Vec::new(), Vec::new());
    for s in 0..3 {
        let mut b = batch(&mut rng, 90_000, t0 + s as i64 * 60_000_000);
        // `city` (always a dictionary: it has an inverted index) with ~78,000 values a segment.
        let cities: ArrayRef = Arc::new(StringArray::from_iter((0..b.num_rows()).map(|_| {
            (!rng.random_ratio(1, 50)).then(|| format!("c{:06}", rng.random_range(0..300_000)))
        })));
        let mut cols = b.columns().to_vec();
        cols[1] = cities;
        b = RecordBatch::try_new(b.schema(), cols).unwrap();
        segments.push(default_segment(&b));
        batches.push(b);
    }
    let biggest = segments
        .iter()
        .map(|s| s.dictionary(1).unwrap().unwrap().len())
        .max()
        .unwrap();
    assert!(
        biggest >= 1 << 16,
        "{biggest} entries: under the split threshold"
    );
    // Without the cache of segments' parts (a table it serves is aggregated slice by slice).
    let limits = QueryLimits {
        use_cache: false,
        ..QueryLimits::default()
    };
    for (workers, valid) in [(2, false), (3, false), (2, true), (3, true)] {
        let (engine, reference) = engine_and_reference(schema(), segments.clone(), &batches);
        let engine = match valid {
            false => engine,
            true => QueryEngine::new(Arc::new(Fixed(TableSnapshot {
                valid: segments
                    .iter()
                    .map(|s| Arc::new(roaring::RoaringBitmap::from_iter(0..s.row_count())))
                    .collect(),
                name: "t".into(),
                schema: schema(),
                segments: segments.clone(),
            }))),
        };
        let engine = engine.with_target_partitions(workers);
        for sql in [
            "SELECT city, count(*) AS n, sum(big) AS s, min(lat) AS lo FROM t GROUP BY city",
            "SELECT city, count(*) AS n FROM t GROUP BY city ORDER BY n DESC, city LIMIT 20",
            "SELECT count(*) FROM (SELECT city FROM t GROUP BY city)",
        ] {
            let plan = explain(&engine, sql).await;
            assert!(plan.contains("SegmentAggregateExec"), "{plan}");
            let got = engine.execute(sql, &limits).await.unwrap();
            let want = reference.sql(sql).await.unwrap().collect().await.unwrap();
            assert_eq!(render(&got.batches), render(&want), "{sql}");
            if !sql.contains("LIMIT") {
                assert_eq!(
                    got.stats.num_docs_scanned, 270_000,
                    "{workers} workers, valid docs {valid}: {sql}"
                );
            }
        }
        // Either path's key ids and groups count against the query's memory limit.
        let tiny = QueryLimits {
            memory_limit: 1 << 16,
            ..limits.clone()
        };
        let e = engine
            .execute("SELECT city, count(*) FROM t GROUP BY city", &tiny)
            .await
            .unwrap_err();
        assert!(matches!(e, crate::QueryError::Memory(_)), "{e}");
    }
}

#[tokio::test]
async fn count_star_reads_no_columns_and_prunes() {
    let mut rng = StdRng::seed_from_u64(1);
    let t0 = 1_767_225_600_000i64;
    let mut segments = Vec::new();
    for s in 0..3 {
        let b = batch(&mut rng, 500, t0 + s * 10_000_000);
        let bytes = build_segment(&schema(), &[b], &BuildOptions::default()).unwrap();
        segments.push(Arc::new(SegmentReader::open(Bytes::from(bytes)).unwrap()));
    }
    let engine = QueryEngine::new(Arc::new(Fixed(TableSnapshot {
        valid: Vec::new(),
        name: "t".into(),
        schema: schema(),
        segments,
    })));
    let sql = format!(
        "SELECT count(*) FROM t WHERE city = 'Oslo' AND ts >= TIMESTAMP '{}'",
        chrono_fmt(t0 + 20_000_000)
    );
    let out = engine.execute(&sql, &QueryLimits::default()).await.unwrap();
    assert_eq!(out.stats.num_segments_queried, 3);
    assert_eq!(
        out.stats.num_segments_pruned, 2,
        "time range prunes two segments"
    );
    assert_eq!(
        out.stats.blocks_scanned, 0,
        "inverted index and zone maps answer without scanning"
    );
    let plan = explain(&engine, &sql).await;
    assert!(
        plan.contains("SegmentAggregateExec: table=t, gby=[]"),
        "{plan}"
    );
    assert!(!plan.contains("FilterExec"), "filters are exact: {plan}");
}

/// `ORDER BY ts LIMIT n` (a dashboard's "latest events"): the TopK's running threshold
/// reaches the scan as a dynamic filter, and segments past it are pruned by their time range.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topk_threshold_prunes_later_segments() {
    let mut rng = StdRng::seed_from_u64(7);
    let t0 = 1_767_225_600_000i64;
    let (mut segments, mut batches) = (Vec::new(), Vec::new());
    for s in 0..4 {
        let b = batch(&mut rng, 400, t0 + s * 10_000_000);
        segments.push(default_segment(&b));
        batches.push(b);
    }
    let (engine, reference) = engine_and_reference(schema(), segments, &batches);
    // One partition reads the segments oldest first.
    let engine = engine.with_target_partitions(1);
    for sql in [
        "SELECT ts, city FROM t WHERE ts IS NOT NULL ORDER BY ts LIMIT 5",
        "SELECT ts, city FROM t ORDER BY ts NULLS FIRST LIMIT 5",
        "SELECT ts, n FROM t ORDER BY ts DESC LIMIT 5",
    ] {
        assert_same(&engine, &reference, sql).await;
    }
    let sql = "SELECT ts, city FROM t WHERE ts IS NOT NULL ORDER BY ts LIMIT 5";
    let out = engine.execute(sql, &QueryLimits::default()).await.unwrap();
    assert_eq!(out.stats.num_segments_queried, 4);
    assert_eq!(out.stats.num_segments_pruned, 3, "{:?}", out.stats);
}

#[tokio::test]
async fn limits_and_errors() {
    let engine = QueryEngine::new(Arc::new(Fixed(TableSnapshot {
        valid: Vec::new(),
        name: "t".into(),
        schema: schema(),
        segments: vec![],
    })));
    let e = engine
        .execute("SELEC 1", &QueryLimits::default())
        .await
        .unwrap_err();
    assert_eq!(e.pinot_code(), 150);
    let e = engine
        .execute("DROP TABLE t", &QueryLimits::default())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("only queries"), "{e}");
    let e = engine
        .execute("SELECT * FROM nope", &QueryLimits::default())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("nope"), "{e}");
    let tight = QueryLimits {
        max_rows: 10,
        ..QueryLimits::default()
    };
    let e = engine
        .execute("SELECT * FROM generate_series(1, 100)", &tight)
        .await
        .unwrap_err();
    assert!(matches!(e, crate::QueryError::RowLimit(10)), "{e}");
    let tiny = QueryLimits {
        memory_limit: 1 << 16,
        ..QueryLimits::default()
    };
    let e = engine
        .execute("SELECT v % 100000 AS k, count(*) FROM generate_series(1, 2000000) AS g(v) GROUP BY k ORDER BY k", &tiny)
        .await
        .unwrap_err();
    assert!(matches!(e, crate::QueryError::Memory(_)), "{e}");
    let quick = QueryLimits {
        timeout: std::time::Duration::from_millis(1),
        ..QueryLimits::default()
    };
    let e = engine
        .execute(
            "SELECT count(DISTINCT v) FROM generate_series(1, 50000000) AS g(v)",
            &quick,
        )
        .await
        .unwrap_err();
    assert!(matches!(e, crate::QueryError::Timeout(1)), "{e}");
}

/// Every failure has its kind from the error's structure or from resolving names, whatever
/// its message says.
#[tokio::test]
async fn errors_have_kinds() {
    use crate::ErrorKind::*;
    let engine = QueryEngine::new(Arc::new(Fixed(TableSnapshot {
        valid: Vec::new(),
        name: "t".into(),
        schema: schema(),
        segments: vec![],
    })));
    for (sql, kind) in [
        ("SELEC 1", Syntax),
        ("SELECT 1; SELECT 2", Syntax),
        ("DELETE FROM t", ReadOnly),
        ("SELECT * FROM nope", UndefinedTable),
        (
            "WITH x AS (SELECT 1 AS a) SELECT * FROM x JOIN nope ON true",
            UndefinedTable,
        ),
        ("SELECT nope FROM t", UndefinedColumn),
        ("SELECT no_such_function(1)", UndefinedFunction),
        (
            "SELECT count(*) FROM t GROUP BY no_such_function(1)",
            UndefinedFunction,
        ),
        ("SELECT 1 / 0", DivisionByZero),
        ("SELECT CAST('x' AS INT)", InvalidValue),
        ("SELECT PERCENTILETDIGEST(1, 500)", InvalidQuery),
        ("SELECT 'a' + 1", InvalidQuery),
        ("SELECT repeat('x', 2000000000)", Memory),
        ("SELECT range(0, 3000000000)", Memory),
        ("SELECT lpad('x', 2000000000)", Memory),
        (
            "SELECT replace(repeat('a', 100000), 'a', repeat('b', 100000))",
            Memory,
        ),
    ] {
        let e = engine
            .execute(sql, &QueryLimits::default())
            .await
            .unwrap_err();
        assert_eq!(e.kind(), kind, "{sql}: {e}");
    }
    // Names that do exist plan, table functions and CTEs included.
    for sql in [
        "WITH x AS (SELECT 1 AS a) SELECT * FROM x",
        "SELECT count(*) FROM generate_series(1, 10)",
        "SELECT repeat('x', 3), range(0, 4)",
    ] {
        engine.execute(sql, &QueryLimits::default()).await.unwrap();
    }
    // A chain too long to plan safely is refused before parsing.
    let chain = format!("SELECT 1{}", "+1".repeat(5000));
    let e = engine
        .execute(&chain, &QueryLimits::default())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), TooComplex, "{e}");
}

/// Multi-value columns: the same random `array_has` / `array_has_any` / `array_has_all`
/// filters (with NOT, AND, OR and scalar filters) over segments — pushed down to the
/// segments' any-value leaves — and over the same `List` arrays in a stock DataFusion
/// `MemTable`; rows, counts and materialised arrays must agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_value_filters_answer_like_datafusion_over_arrow() {
    use arrow::array::{ListBuilder, StringBuilder};
    let mut rng = StdRng::seed_from_u64(0x3A11);
    let words = ["red", "green", "blue", "new", "sale", "gift"];
    let mut n_col = ColumnDef::new("n", ColumnType::Long);
    n_col.nullable = false;
    let seg_schema = SegmentSchema {
        columns: vec![
            n_col,
            ColumnDef::multi_value("tags", ColumnType::String).with_index(IndexKind::Inverted),
            ColumnDef::multi_value("ids", ColumnType::Long),
        ],
        time_column: None,
        star_trees: Vec::new(),
    };
    let mut batches = Vec::new();
    let mut segments = Vec::new();
    for s in 0..3 {
        let rows = 400 + s * 100;
        let mut tags = ListBuilder::new(StringBuilder::new());
        let mut ids = ListBuilder::new(arrow::array::Int64Builder::new());
        for _ in 0..rows {
            if rng.random_bool(0.1) {
                tags.append(false);
            } else {
                for _ in 0..rng.random_range(0..4) {
                    tags.values()
                        .append_value(words[rng.random_range(0..words.len())]);
                }
                tags.append(true);
            }
            if rng.random_bool(0.1) {
                ids.append(false);
            } else {
                for _ in 0..rng.random_range(0..3) {
                    ids.values().append_value(rng.random_range(0..40));
                }
                ids.append(true);
            }
        }
        let n: ArrayRef = Arc::new(Int64Array::from_iter_values(
            (0..rows as i64).map(|i| s as i64 * 10_000 + i),
        ));
        let tags: ArrayRef = Arc::new(tags.finish());
        let ids: ArrayRef = Arc::new(ids.finish());
        let arrow_schema = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, false),
            Field::new("tags", tags.data_type().clone(), true),
            Field::new("ids", ids.data_type().clone(), true),
        ]));
        let b = RecordBatch::try_new(arrow_schema, vec![n, tags, ids]).unwrap();
        let opts = BuildOptions {
            block_rows: 64,
            ..BuildOptions::default()
        };
        let bytes = build_segment(&seg_schema, std::slice::from_ref(&b), &opts).unwrap();
        segments.push(Arc::new(SegmentReader::open(Bytes::from(bytes)).unwrap()));
        batches.push(b);
    }
    let engine = QueryEngine::new(Arc::new(Fixed(TableSnapshot {
        valid: Vec::new(),
        name: "t".into(),
        schema: seg_schema,
        segments,
    })));
    let reference = SessionContext::new();
    let mem = MemTable::try_new(batches[0].schema(), vec![batches]).unwrap();
    reference.register_table("t", Arc::new(mem)).unwrap();
    let leaf = |rng: &mut StdRng| -> String {
        let w = |rng: &mut StdRng| format!("'{}'", words[rng.random_range(0..words.len())]);
        match rng.random_range(0..5) {
            0 => format!("array_has(tags, {})", w(rng)),
            1 => format!("array_has_any(tags, make_array({}, {}))", w(rng), w(rng)),
            2 => format!("array_has_all(tags, make_array({}, {}))", w(rng), w(rng)),
            3 => format!("array_has(ids, {})", rng.random_range(0..45)),
            _ => format!("n % 7 = {}", rng.random_range(0..7)),
        }
    };
    let shapes = [
        "SELECT count(*) FROM t WHERE {f}",
        "SELECT n, tags, ids FROM t WHERE {f}",
        "SELECT count(tags), sum(n) FROM t WHERE {f}",
        "SELECT tags, count(*), sum(n) FROM t WHERE {f} GROUP BY tags",
    ];
    let plan = explain(&engine, "SELECT n FROM t WHERE array_has(tags, 'red')").await;
    assert!(plan.contains("Compare"), "array_has is pushed down: {plan}");
    for i in 0..120 {
        let (a, b) = (leaf(&mut rng), leaf(&mut rng));
        let f = match i % 4 {
            0 => a,
            1 => format!("NOT {a}"),
            2 => format!("{a} AND NOT {b}"),
            _ => format!("{a} OR {b}"),
        };
        let sql = shapes[i % shapes.len()].replace("{f}", &f);
        assert_same(&engine, &reference, &sql).await;
    }
}

/// A source whose table carries a replaceable data version (like a batch table's view).
#[derive(Debug)]
struct Versioned {
    snapshot: TableSnapshot,
    version: parking_lot::Mutex<crate::cache::DataVersion>,
}

impl TableSource for Versioned {
    fn table_names(&self) -> Vec<String> {
        vec![self.snapshot.name.clone()]
    }
    fn snapshot(&self, name: &str) -> Result<Option<TableSnapshot>, crate::QueryError> {
        Ok((name == self.snapshot.name).then(|| self.snapshot.clone()))
    }
    fn data_version(&self, name: &str) -> Option<crate::cache::DataVersion> {
        (name == self.snapshot.name).then(|| self.version.lock().clone())
    }
}

#[tokio::test]
async fn repeated_queries_over_unchanged_tables_come_from_the_cache() {
    let mut rng = StdRng::seed_from_u64(3);
    let b = batch(&mut rng, 2000, 1_767_225_600_000);
    let bytes = build_segment(&schema(), &[b], &BuildOptions::default()).unwrap();
    let source = Arc::new(Versioned {
        snapshot: TableSnapshot {
            valid: Vec::new(),
            name: "t".into(),
            schema: schema(),
            segments: vec![Arc::new(SegmentReader::open(Bytes::from(bytes)).unwrap())],
        },
        version: parking_lot::Mutex::new(Arc::new(1u32)),
    });
    let engine = QueryEngine::new(source.clone());
    let l = QueryLimits::default();
    let sql = "SELECT city, count(*) AS n FROM t GROUP BY city ORDER BY city";
    let first = engine.execute(sql, &l).await.unwrap();
    let second = engine.execute(sql, &l).await.unwrap();
    assert!(!first.cached && second.cached);
    assert_eq!(first.batches, second.batches);
    assert_eq!(first.stats, second.stats, "the computing run's counters");
    // Another query text is another entry.
    let other = engine
        .execute("SELECT count(*) FROM t WHERE city = 'Oslo'", &l)
        .await
        .unwrap();
    assert!(!other.cached);
    // New data (a new version) is never answered from the old result.
    *source.version.lock() = Arc::new(2u32);
    let third = engine.execute(sql, &l).await.unwrap();
    assert!(!third.cached);
    assert!(engine.execute(sql, &l).await.unwrap().cached);
    // Time-dependent queries are never cached.
    let now = "SELECT count(*) FROM t WHERE ts < now()";
    engine.execute(now, &l).await.unwrap();
    assert!(!engine.execute(now, &l).await.unwrap().cached);
    // A row limit smaller than the cached result still fails.
    let tight = QueryLimits {
        max_rows: 2,
        ..QueryLimits::default()
    };
    assert!(engine.execute(sql, &tight).await.is_err());
}

/// A filtered scan's row estimate comes from the footers (a tenth of the time range keeps
/// about a tenth of the rows), not a fixed share: DataFusion decides from it whether a join
/// side is broadcast.
#[tokio::test]
async fn a_filtered_scan_estimates_its_rows_from_the_footers() {
    use datafusion::catalog::TableProvider;
    use datafusion::common::stats::Precision;
    use datafusion::prelude::{col, lit};
    use datafusion::scalar::ScalarValue;
    let mut rng = StdRng::seed_from_u64(3);
    let t0 = 1_767_225_600_000i64;
    let segments: Vec<_> = (0..4)
        .map(|s| default_segment(&batch(&mut rng, 1000, t0 + s * 1_000_000)))
        .collect();
    let table = crate::table::SegmentTable::new(
        TableSnapshot {
            valid: Vec::new(),
            name: "t".into(),
            schema: schema(),
            segments,
        },
        Arc::default(),
    );
    let ctx = SessionContext::new();
    let ts = |ms: i64| lit(ScalarValue::TimestampMillisecond(Some(ms), None));
    // 4,000 rows a second apart; 400 seconds of them.
    let filter = col("ts")
        .gt_eq(ts(t0 + 1_000_000))
        .and(col("ts").lt(ts(t0 + 1_400_000)));
    let plan = table
        .scan(&ctx.state(), None, &[filter], None)
        .await
        .unwrap();
    let Precision::Inexact(rows) = plan.partition_statistics(None).unwrap().num_rows else {
        panic!("no row estimate");
    };
    assert!((300..=500).contains(&rows), "estimated {rows} rows");
    let all = table.scan(&ctx.state(), None, &[], None).await.unwrap();
    assert_eq!(
        all.partition_statistics(None).unwrap().num_rows,
        Precision::Inexact(4000)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_parameters_take_the_types_postgres_would_give_them() {
    use crate::postgres::{self, PgCommand, PgSession};
    let mut rng = StdRng::seed_from_u64(7);
    let b = batch(&mut rng, 100, 1_767_225_600_000);
    let (engine, _) = engine_and_reference(schema(), vec![default_segment(&b)], &[b]);
    let session = Arc::new(PgSession::new("basalt", "analytics"));
    let list = |dt| Some(DataType::List(Arc::new(Field::new("item", dt, true))));
    for (sql, want) in [
        (
            "SELECT count(*) FROM t WHERE city = $1 AND n > $2",
            vec![
                Some(DataType::Dictionary(
                    Box::new(DataType::Int32),
                    Box::new(DataType::Utf8),
                )),
                Some(DataType::Int32),
            ],
        ),
        ("SELECT $1::integer + 1", vec![Some(DataType::Int32)]),
        (
            "SELECT CAST($1 AS date), $2::varchar, $3",
            vec![Some(DataType::Date32), Some(DataType::Utf8View), None],
        ),
        (
            "SELECT count(*) FROM t WHERE city = ANY($1) AND n <> ALL($2)",
            vec![list(DataType::Utf8), list(DataType::Int32)],
        ),
        (
            "SELECT (SELECT max(n) FROM t WHERE big > $1::bigint) FROM t WHERE lat < $2",
            vec![Some(DataType::Int64), Some(DataType::Float64)],
        ),
        ("SELECT $1::oid[]", vec![list(DataType::UInt32)]),
        (
            "SELECT city FROM t ORDER BY city LIMIT $1 OFFSET $2",
            vec![Some(DataType::Int64), Some(DataType::Int64)],
        ),
    ] {
        let PgCommand::Query(statement, _) =
            postgres::parse(sql, &Default::default()).unwrap().remove(0)
        else {
            panic!("{sql}")
        };
        let (_, params) = engine.describe_pg(&statement, &session).await.unwrap();
        assert_eq!(params, want, "{sql}");
    }
}

/// A source whose tables can be added while the engine serves.
#[derive(Debug)]
struct Growing(parking_lot::Mutex<Vec<TableSnapshot>>);

impl TableSource for Growing {
    fn table_names(&self) -> Vec<String> {
        self.0.lock().iter().map(|t| t.name.clone()).collect()
    }
    fn snapshot(&self, name: &str) -> Result<Option<TableSnapshot>, crate::QueryError> {
        Ok(self.0.lock().iter().find(|t| t.name == name).cloned())
    }
}

/// `sql` through the PostgreSQL path in `session`, rendered.
async fn pg(engine: &QueryEngine, session: &Arc<crate::postgres::PgSession>, sql: &str) -> String {
    let l = QueryLimits::default();
    let mut commands = crate::postgres::parse(sql, &l.statement).unwrap();
    let Some(crate::postgres::PgCommand::Query(statement, _)) = commands.pop() else {
        panic!("{sql} is a query");
    };
    let out = engine
        .execute_pg(&statement, Vec::new(), session, &l)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    arrow::util::pretty::pretty_format_batches(&out.batches)
        .unwrap()
        .to_string()
}

/// Sessions are copies of templates built once (`engine::sessions`): each PostgreSQL
/// session still answers from its own settings, tables added later are visible, every query
/// reserves from its own memory pool, and `now()` is each query's own start.
#[tokio::test]
async fn sessions_copied_from_templates_keep_what_is_each_querys_own() {
    use crate::postgres::PgSession;
    let empty = |name: &str| TableSnapshot {
        valid: Vec::new(),
        name: name.into(),
        schema: schema(),
        segments: vec![],
    };
    let source = Arc::new(Growing(parking_lot::Mutex::new(vec![empty("t")])));
    let engine = QueryEngine::new(source.clone());
    let l = QueryLimits::default();
    let with_name = |name: &str| {
        let mut s = PgSession::new("basalt", "analytics");
        s.set("application_name", name);
        Arc::new(s)
    };
    let (a, b) = (with_name("panel-a"), with_name("panel-b"));
    let setting = "SELECT current_setting('application_name') AS v";
    for _ in 0..2 {
        assert!(pg(&engine, &a, setting).await.contains("panel-a"));
        assert!(pg(&engine, &b, setting).await.contains("panel-b"));
    }
    // A table created after the session's template was built.
    let regclass = "SELECT to_regclass('u') IS NULL AS missing";
    assert!(pg(&engine, &a, regclass).await.contains("true"));
    source.0.lock().push(empty("u"));
    assert!(pg(&engine, &a, regclass).await.contains("false"));
    assert!(engine.execute("SELECT count(*) FROM u", &l).await.is_ok());
    // The memory-bound functions reserve from each query's pool, not the template's.
    let tiny = QueryLimits {
        memory_limit: 1 << 16,
        ..QueryLimits::default()
    };
    let big = "SELECT length(repeat('x', 1000000)) AS n";
    for _ in 0..2 {
        let e = engine.execute(big, &tiny).await.unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Memory, "{e}");
        assert!(engine.execute(big, &l).await.is_ok());
    }
    // `now()` is when each query starts.
    let now = |out: crate::QueryOutput| {
        arrow::util::pretty::pretty_format_batches(&out.batches)
            .unwrap()
            .to_string()
    };
    let first = now(engine.execute("SELECT now()", &l).await.unwrap());
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let second = now(engine.execute("SELECT now()", &l).await.unwrap());
    assert_ne!(first, second);
}
