//! Segments' aggregation parts reused across queries ([`crate::segment_agg::PartialAggregates`]):
//! the answers equal DataFusion's over the same rows whether the parts were computed or
//! reused, a moving time range reuses exactly the segments it covers whole, a change of an
//! upsert segment's valid docs recomputes exactly that segment, and counts taken from an
//! index leave keys without one to their kept parts.

use std::sync::Arc;

use basalt_segment::{
    build_segment, BuildOptions, ColumnDef, ColumnType, RoaringBitmap, SegmentReader,
};
use bytes::Bytes;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::engine::{QueryEngine, QueryLimits};
use crate::segment_agg::PartialAggregates;
use crate::table::{TableSnapshot, TableSource};
use crate::tests::{batch, filter, render, schema};

const T0: i64 = 1_767_225_600_000; // 2026-01-01
/// Rows per segment; one second apart, so segment `s` spans [T0 + s*ROWS s, ...).
const ROWS: usize = 600;

/// A table whose snapshot (segments and valid docs) the test replaces.
#[derive(Debug)]
struct Table(Mutex<TableSnapshot>);

impl TableSource for Table {
    fn table_names(&self) -> Vec<String> {
        vec!["t".into()]
    }
    fn snapshot(&self, name: &str) -> Result<Option<TableSnapshot>, crate::QueryError> {
        Ok((name == "t").then(|| self.0.lock().clone()))
    }
    fn direct_snapshot(&self, name: &str) -> Result<Option<TableSnapshot>, crate::QueryError> {
        self.snapshot(name)
    }
}

/// Four segments of `ROWS` rows each in blocks of `block_rows`, an engine keeping every
/// segment's parts, and DataFusion over the same rows.
fn setup(
    block_rows: usize,
) -> (
    QueryEngine,
    Arc<Table>,
    SessionContext,
    Vec<arrow::array::RecordBatch>,
) {
    let mut rng = StdRng::seed_from_u64(0x9A27);
    let opts = BuildOptions {
        block_rows,
        ..BuildOptions::default()
    };
    // Rows stay in arrival (time) order, as in a real-time table: no sorted column.
    let mut schema = schema();
    schema.columns[3] = ColumnDef::new("n", ColumnType::Int);
    let mut batches = Vec::new();
    let mut segments = Vec::new();
    for s in 0..4 {
        let b = batch(&mut rng, ROWS, T0 + (s * ROWS) as i64 * 1000);
        let bytes = build_segment(&schema, std::slice::from_ref(&b), &opts).unwrap();
        segments.push(Arc::new(SegmentReader::open(Bytes::from(bytes)).unwrap()));
        batches.push(b);
    }
    let table = Arc::new(Table(Mutex::new(TableSnapshot {
        name: "t".into(),
        schema,
        segments,
        valid: Vec::new(),
    })));
    let engine = QueryEngine::new(table.clone())
        .with_partial_cache(PartialAggregates::new(64 << 20).with_min_rows(0));
    let reference = SessionContext::new();
    let mem = MemTable::try_new(batches[0].schema(), vec![batches.clone()]).unwrap();
    reference.register_table("t", Arc::new(mem)).unwrap();
    (engine, table, reference, batches)
}

async fn rows(ctx: &SessionContext, sql: &str) -> Vec<String> {
    render(&ctx.sql(sql).await.unwrap().collect().await.unwrap())
}

/// Runs `sql` on the engine; its rows and how many segments' parts were reused.
async fn run(engine: &QueryEngine, sql: &str, limits: &QueryLimits) -> (Vec<String>, u64) {
    let out = engine
        .execute(sql, limits)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    (render(&out.batches), out.stats.num_segments_from_cache)
}

/// Slices in one segment of `ROWS` rows in blocks of 128 rows (what `setup(128)` builds).
fn slices_per_segment() -> u64 {
    ROWS.div_ceil(128)
        .div_ceil(crate::segment_agg::SLICE_BLOCKS) as u64
}

/// The slices (as ranges of rows, one row a second from `T0`) of the four segments of
/// `setup(block_rows)` that lie within rows `[lo, hi)`.
fn slices_within(block_rows: usize, lo: usize, hi: usize) -> Vec<(usize, usize)> {
    let slice = block_rows * crate::segment_agg::SLICE_BLOCKS;
    (0..4)
        .flat_map(|seg| {
            (0..ROWS).step_by(slice).map(move |first| {
                let at = seg * ROWS + first;
                (at, at + slice.min(ROWS - first) - 1)
            })
        })
        .filter(|&(a, b)| a >= lo && b < hi)
        .collect()
}

fn ts(ms: i64) -> String {
    let t = chrono::DateTime::from_timestamp_millis(ms).expect("in range");
    format!("TIMESTAMP '{}'", t.format("%Y-%m-%d %H:%M:%S"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reused_parts_answer_like_datafusion() {
    let (engine, _, reference, _) = setup(128);
    let l = QueryLimits::default();
    let shapes = [
        "SELECT city, count(*), min(lat), max(big) FROM t WHERE {f} GROUP BY city",
        "SELECT city, approx_distinct(uid), min(uid) FROM t WHERE {f} GROUP BY city",
        "SELECT n, ok, count(*), sum(big) FROM t WHERE {f} GROUP BY n, ok",
        "SELECT city, tag, avg(lat), count(big), min(ts) FROM t WHERE {f} GROUP BY city, tag",
        "SELECT date_trunc('minute', ts), count(*), sum(lat) FROM t WHERE {f} GROUP BY 1",
        "SELECT ok, big % 7, approx_distinct(tag), max(city) FROM t WHERE {f} GROUP BY ok, big % 7",
        "SELECT floor(extract(epoch from ts)/60)*60, approx_percentile_cont(lat, 0.9) FROM t WHERE {f} GROUP BY 1",
    ];
    let mut rng = StdRng::seed_from_u64(0x51DE);
    let mut reused = 0;
    for i in 0..70 {
        let f = filter(&mut rng, T0, 2);
        let sql = shapes[i % shapes.len()].replace("{f}", &f);
        let want = rows(&reference, &sql).await;
        let (first, _) = run(&engine, &sql, &l).await;
        assert_eq!(first, want, "computed: {sql}");
        let (second, n) = run(&engine, &sql, &l).await;
        assert_eq!(second, want, "reused: {sql}");
        reused += n;
    }
    assert!(reused > 0, "no part was reused");
    // Near-unique keys: a slice's groups are about its rows, not worth keeping.
    let unique = "SELECT uid, count(*), max(lat) FROM t GROUP BY uid";
    let want = rows(&reference, unique).await;
    assert_eq!(run(&engine, unique, &l).await, (want.clone(), 0));
    assert_eq!(run(&engine, unique, &l).await, (want, 0));
    // Off (what benchmarks and `useResultCache=false` ask): nothing reused.
    let off = QueryLimits {
        use_cache: false,
        ..QueryLimits::default()
    };
    let sql = "SELECT city, count(*) FROM t GROUP BY city";
    let (want, _) = run(&engine, sql, &l).await;
    assert_eq!(run(&engine, sql, &l).await.1, 4 * slices_per_segment());
    assert_eq!(run(&engine, sql, &off).await, (want, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moving_range_reuses_the_segments_it_covers_whole() {
    let (engine, _, reference, _) = setup(128);
    let l = QueryLimits::default();
    let span = ROWS as i64 * 1000;
    let panel = |from: i64, to: i64| {
        format!(
            "SELECT city, count(*), sum(big) FROM t WHERE ts BETWEEN {} AND {} GROUP BY city",
            ts(from),
            ts(to)
        )
    };
    // Cuts segment 0, covers 1 and 2, cuts 3.
    let first = panel(T0 + span / 2, T0 + 3 * span + span / 2);
    let (got, n) = run(&engine, &first, &l).await;
    assert_eq!(got, rows(&reference, &first).await);
    assert_eq!(n, 0);
    // One second later: 1 and 2 are still covered whole (their slices are reused), and so
    // are the last slice of 0 and the first of 3 (their rows are 128 s, the range cuts
    // these segments half way); the cut slices are computed for the new bounds.
    let per = slices_per_segment();
    assert_eq!(per, 3);
    let next = panel(T0 + span / 2 + 1000, T0 + 3 * span + span / 2 + 1000);
    let (got, n) = run(&engine, &next, &l).await;
    assert_eq!(got, rows(&reference, &next).await);
    assert_eq!(n, 2 * per + 2);
    // A range covering everything reuses those and computes the rest.
    let all = panel(T0 - 1000, T0 + 5 * span);
    let (got, n) = run(&engine, &all, &l).await;
    assert_eq!(got, rows(&reference, &all).await);
    assert_eq!(n, 2 * per + 2);
    assert_eq!(run(&engine, &all, &l).await.1, 4 * per);
    // Another filter besides the range is part of the key.
    let oslo = all.replace("GROUP BY", "AND city = 'Oslo' GROUP BY");
    let (got, n) = run(&engine, &oslo, &l).await;
    assert_eq!(got, rows(&reference, &oslo).await);
    assert_eq!(n, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_valid_docs_recompute_only_their_segment() {
    let (engine, table, _, batches) = setup(128);
    let l = QueryLimits::default();
    let every: Vec<Arc<RoaringBitmap>> = (0..4)
        .map(|_| Arc::new(RoaringBitmap::from_iter(0..ROWS as u32)))
        .collect();
    table.0.lock().valid = every.clone();
    let sql = "SELECT city, count(*), sum(big) FROM t GROUP BY city";
    let (full, n) = run(&engine, sql, &l).await;
    assert_eq!(n, 0);
    // The same docs in new bitmaps (a fresh view): still reused.
    table.0.lock().valid = every
        .iter()
        .map(|v| Arc::new(RoaringBitmap::clone(v)))
        .collect();
    let per = slices_per_segment();
    assert_eq!(run(&engine, sql, &l).await, (full.clone(), 4 * per));
    // An update superseded the even docs of segment 2: only that segment is recomputed,
    // and the answer is DataFusion's over the rows still valid.
    let odd = Arc::new(RoaringBitmap::from_iter((1..ROWS as u32).step_by(2)));
    table.0.lock().valid[2] = odd;
    let (got, n) = run(&engine, sql, &l).await;
    assert_eq!(n, 3 * per);
    let reference = SessionContext::new();
    let mut kept = batches.clone();
    let mask = arrow::array::BooleanArray::from_iter((0..ROWS).map(|i| Some(i % 2 == 1)));
    kept[2] = arrow::compute::filter_record_batch(&batches[2], &mask).unwrap();
    let mem = MemTable::try_new(kept[0].schema(), vec![kept]).unwrap();
    reference.register_table("t", Arc::new(mem)).unwrap();
    assert_eq!(got, rows(&reference, sql).await);
    assert_ne!(got, full);
    assert_eq!(run(&engine, sql, &l).await.1, 4 * per);
}

/// Blocks of 16 rows (16 s), so a segment has many slices: a range moving by a second
/// recomputes only the slices it cuts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moving_range_recomputes_only_the_slices_it_cuts() {
    let (engine, _, reference, _) = setup(16);
    let l = QueryLimits::default();
    let panel = |from: i64, to: i64| {
        format!(
            "SELECT date_trunc('minute', ts), count(*), max(lat) FROM t WHERE ts >= {} AND ts < {} GROUP BY 1",
            ts(from),
            ts(to)
        )
    };
    let s = |secs: i64| T0 + secs * 1000;
    let first = panel(s(200), s(2000));
    assert_eq!(
        run(&engine, &first, &l).await.0,
        rows(&reference, &first).await
    );
    let next = panel(s(201), s(2001));
    let out = engine.execute(&next, &l).await.unwrap();
    assert_eq!(render(&out.batches), rows(&reference, &next).await);
    // The slices (second ranges, one row a second) inside both [200, 2000) and [201, 2001).
    let covered = slices_within(16, 201, 2000);
    assert!(covered.len() > 10);
    assert_eq!(out.stats.num_segments_from_cache, covered.len() as u64);
    // Scanned: the range's 1,800 rows but those of the slices reused.
    let reused: usize = covered.iter().map(|(lo, hi)| hi - lo + 1).sum();
    assert_eq!(out.stats.num_docs_scanned, (1800 - reused) as u64);
}

/// Aggregates without GROUP BY, answered by the direct plan (`crate::direct`), keep and
/// reuse their slices' parts the same way: a range moving by a second recomputes only the
/// slices it cuts, and the answers are DataFusion's over the rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_aggregates_recompute_only_the_slices_a_moving_range_cuts() {
    let (engine, _, reference, _) = setup(16);
    let l = QueryLimits::default();
    let panel = |from: i64, to: i64| {
        format!(
            "SELECT count(*), max(lat), sum(big), avg(n) FROM t \
             WHERE ts >= to_timestamp_millis({}) AND ts < to_timestamp_millis({})",
            T0 + from * 1000,
            T0 + to * 1000
        )
    };
    let first = panel(200, 2000);
    let out = engine.execute(&first, &l).await.unwrap();
    assert!(out.direct, "{first}");
    assert_eq!(render(&out.batches), rows(&reference, &first).await);
    assert_eq!(out.stats.num_segments_from_cache, 0);
    let next = panel(201, 2001);
    let out = engine.execute(&next, &l).await.unwrap();
    assert!(out.direct, "{next}");
    assert_eq!(render(&out.batches), rows(&reference, &next).await);
    let covered = slices_within(16, 201, 2000);
    assert!(covered.len() > 10);
    assert_eq!(out.stats.num_segments_from_cache, covered.len() as u64);
    let reused: usize = covered.iter().map(|(lo, hi)| hi - lo + 1).sum();
    assert_eq!(out.stats.num_docs_scanned, (1800 - reused) as u64);
    // Without the cache: the same answer, nothing reused.
    let off = QueryLimits {
        use_cache: false,
        ..QueryLimits::default()
    };
    assert_eq!(
        run(&engine, &next, &off).await,
        (rows(&reference, &next).await, 0)
    );
    // Other aggregates are another key: nothing of the above is theirs.
    let other = next.replace("avg(n)", "min(n)");
    let (got, n) = run(&engine, &other, &l).await;
    assert_eq!((got, n), (rows(&reference, &other).await, 0));
}

/// Where parts are kept, a count grouped by a column with an inverted index (`city`) over
/// segments it covers whole is counted from the index (nothing to keep), while one grouped by
/// a column without an index (`n`) still keeps its slices' parts and reuses them: the index
/// path never makes an unindexed column's rows be read again at every refresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_from_the_index_leave_unindexed_keys_to_their_kept_parts() {
    let mut rng = StdRng::seed_from_u64(0x1DE7);
    let opts = BuildOptions {
        block_rows: 256,
        ..BuildOptions::default()
    };
    let mut schema = schema();
    schema.columns[3] = ColumnDef::new("n", ColumnType::Int);
    let per_segment = 6_000;
    let batches: Vec<_> = (0..2)
        .map(|s| batch(&mut rng, per_segment, T0 + (s * per_segment) as i64 * 1000))
        .collect();
    let segments = batches
        .iter()
        .map(|b| {
            let bytes = build_segment(&schema, std::slice::from_ref(b), &opts).unwrap();
            Arc::new(SegmentReader::open(Bytes::from(bytes)).unwrap())
        })
        .collect();
    let table = Arc::new(Table(Mutex::new(TableSnapshot {
        name: "t".into(),
        schema,
        segments,
        valid: Vec::new(),
    })));
    let engine = QueryEngine::new(table)
        .with_partial_cache(PartialAggregates::new(64 << 20).with_min_rows(0));
    let reference = SessionContext::new();
    let mem = MemTable::try_new(batches[0].schema(), vec![batches.clone()]).unwrap();
    reference.register_table("t", Arc::new(mem)).unwrap();
    let l = QueryLimits::default();
    let slices = per_segment
        .div_ceil(256)
        .div_ceil(crate::segment_agg::SLICE_BLOCKS) as u64;

    let by_city = "SELECT city, count(*) FROM t GROUP BY city";
    for _ in 0..2 {
        let out = engine.execute(by_city, &l).await.unwrap();
        assert_eq!(render(&out.batches), rows(&reference, by_city).await);
        assert_eq!(out.stats.index_lookups, 2, "counted from the index");
        assert_eq!(out.stats.num_segments_from_cache, 0, "nothing kept");
    }
    let by_n = "SELECT n, count(*) FROM t GROUP BY n";
    let (got, reused) = run(&engine, by_n, &l).await;
    assert_eq!(got, rows(&reference, by_n).await);
    assert_eq!(reused, 0);
    let (got, reused) = run(&engine, by_n, &l).await;
    assert_eq!(got, rows(&reference, by_n).await);
    assert_eq!(reused, 2 * slices, "every slice's part reused");
}
