//! Differential tests of the direct plan: random one-table aggregations under random
//! filters answer with the same columns (names, types, nullability) and the same values as
//! DataFusion's plan of the same statement over the same segments, and as DataFusion over
//! the same rows in Arrow; upsert valid docs are honoured; the PostgreSQL path describes
//! what it answers; statements outside the shape go to DataFusion.

use std::sync::Arc;

use arrow::array::{Array, RecordBatch};
use basalt_segment::RoaringBitmap;
use datafusion::prelude::SessionContext;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::engine::{QueryEngine, QueryLimits, QueryOutput};
use crate::table::TableSnapshot;
use crate::tests::{
    batch, engine_and_reference, filter, render, schema, segments_last_unindexed, Fixed,
};

const T0: i64 = 1_767_225_600_000; // 2026-01-01

/// Select lists over every supported (function, column type) pair.
const LISTS: &[&str] = &[
    "count(*)",
    "count(*), sum(lat) AS rev",
    "count(*), sum(big), min(n), max(lat)",
    "sum(n), avg(big), count(lat), min(ts), max(ts)",
    "avg(lat) AS a, count(ok) AS c, sum(lat), t.big",
    "max(big), min(big), avg(n), count(n), count(ts)",
    "min(lat), max(n), sum(t.lat), count(t.ok)",
];

/// A condition on `ts` in the forms dashboards send.
fn time_leaf(rng: &mut StdRng) -> String {
    let at = T0 + rng.random_range(0..2_400_000);
    let op = [">=", ">", "<", "<="][rng.random_range(0..4)];
    match rng.random_range(0..5) {
        0 => format!("ts {op} to_timestamp_millis({at}) - INTERVAL '5 minutes'"),
        1 => format!("ts {op} to_timestamp_millis({at}) + INTERVAL '90' SECOND"),
        2 => format!(
            "ts {op} '{}'",
            chrono::DateTime::from_timestamp_millis(at)
                .unwrap()
                .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        ),
        3 => format!(
            "ts BETWEEN to_timestamp_millis({at}) AND to_timestamp_millis({at}) + INTERVAL '10 minutes'"
        ),
        _ => format!("to_timestamp_millis({at}) {op} ts"),
    }
}

fn random_filter(rng: &mut StdRng) -> Option<String> {
    match rng.random_range(0..6) {
        0 => None,
        1 => Some(time_leaf(rng)),
        2 => Some(format!("{} AND {}", time_leaf(rng), filter(rng, T0, 2))),
        _ => Some(filter(rng, T0, 3)),
    }
}

fn sql_of(list: &str, f: &Option<String>) -> String {
    // `t.big` alone is not an aggregate: DataFusion refuses it, and so must the direct plan.
    match f {
        Some(f) => format!("SELECT {list} FROM t WHERE {f}"),
        None => format!("SELECT {list} FROM t"),
    }
}

/// Cells equal, floats within a relative 1e-9 (the paths add floats in different orders).
fn assert_cells_equal(got: &[String], want: &[String], sql: &str) {
    assert_eq!(got.len(), want.len(), "{sql}");
    for (g, w) in got.iter().zip(want) {
        let (gs, ws): (Vec<&str>, Vec<&str>) = (g.split('|').collect(), w.split('|').collect());
        assert_eq!(gs.len(), ws.len(), "{sql}");
        for (a, b) in gs.iter().zip(&ws) {
            if a == b {
                continue;
            }
            let (x, y) = (a.parse::<f64>(), b.parse::<f64>());
            let close = match (x, y) {
                (Ok(x), Ok(y)) => (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0),
                _ => false,
            };
            assert!(close, "{sql}: {g} against {w}");
        }
    }
}

async fn run(engine: &QueryEngine, sql: &str, direct: bool) -> Result<QueryOutput, String> {
    let limits = QueryLimits {
        direct_plan: direct,
        use_cache: false,
        ..QueryLimits::default()
    };
    engine
        .execute(sql, &limits)
        .await
        .map_err(|e| e.to_string())
}

/// Checks `sql` on both plans and the reference; returns whether the direct plan took it.
async fn check(engine: &QueryEngine, reference: &SessionContext, sql: &str) -> bool {
    let direct = run(engine, sql, true).await;
    let planned = run(engine, sql, false).await;
    let (direct, planned) = match (direct, planned) {
        (Ok(d), Ok(p)) => (d, p),
        (Err(d), Err(p)) => {
            assert_eq!(d, p, "{sql}: the same error either way");
            return false;
        }
        (d, p) => panic!("{sql}: direct {d:?} against DataFusion {p:?}"),
    };
    assert!(!planned.direct);
    assert_eq!(direct.schema, planned.schema, "{sql}");
    let got = render(&direct.batches);
    assert_cells_equal(&got, &render(&planned.batches), &format!("{sql} (plans)"));
    let want = reference.sql(sql).await.unwrap().collect().await.unwrap();
    assert_cells_equal(&got, &render(&want), &format!("{sql} (reference)"));
    if direct.direct {
        assert_eq!(direct.num_rows(), 1, "{sql}");
        // The scan's counters, as the scan keeps them.
        assert_eq!(direct.stats.total_docs, planned.stats.total_docs, "{sql}");
        assert_eq!(
            direct.stats.num_segments_queried, planned.stats.num_segments_queried,
            "{sql}"
        );
    }
    direct.direct
}

fn segments_and_batches(
    rng: &mut StdRng,
) -> (Vec<Arc<basalt_segment::SegmentReader>>, Vec<RecordBatch>) {
    let batches: Vec<RecordBatch> = (0..5)
        .map(|s| batch(rng, 600 + s * 137, T0 + s as i64 * 500_000))
        .collect();
    (segments_last_unindexed(&schema(), &batches), batches)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregates_answer_like_datafusion() {
    let mut rng = StdRng::seed_from_u64(0xD1_2EC7);
    let (segments, batches) = segments_and_batches(&mut rng);
    let (engine, reference) = engine_and_reference(schema(), segments, &batches);
    let mut direct = 0;
    for i in 0..240 {
        if i == 120 {
            // The second half on the query threads, spread over tasks (these segments are
            // small enough for the task that received the query otherwise). Other tests
            // running meanwhile only change threads, not answers.
            super::INLINE_DOCS.store(0, std::sync::atomic::Ordering::Relaxed);
        }
        let f = random_filter(&mut rng);
        let sql = sql_of(LISTS[i % LISTS.len()], &f);
        if check(&engine, &reference, &sql).await {
            direct += 1;
        }
    }
    super::INLINE_DOCS.store(65_536, std::sync::atomic::Ordering::Relaxed);
    // Most statements take the direct plan (some filters, e.g. `TIMESTAMP '…'` literals
    // and the list with a bare column, do not), so the comparison above is not vacuous.
    assert!(direct > 120, "only {direct} of 240 took the direct plan");

    // The dashboard query of the macro benchmark takes it.
    let c5 = format!(
        "SELECT count(*) FROM t WHERE ts >= to_timestamp_millis({}) - INTERVAL '5 minutes'",
        T0 + 2_000_000
    );
    assert!(check(&engine, &reference, &c5).await, "{c5}");
    // Nothing matches: count 0, other aggregates NULL.
    let none = "SELECT count(*), sum(big), min(ts), avg(lat) FROM t WHERE city = 'Nowhere'";
    assert!(check(&engine, &reference, none).await, "{none}");
    // Outside the shape or the literals it types: DataFusion's plan, same answers or errors.
    for sql in [
        "SELECT count(*) FROM t GROUP BY city",
        "SELECT count(DISTINCT city) FROM t",
        "SELECT count(*) FROM t WHERE n = 'x'",
        "SELECT count(*) FROM t WHERE lat > 1e400",
        "SELECT count(*), count(*) FROM t",
        "SELECT sum(city) FROM t",
        "SELECT count(*) FROM t WHERE ts > now() - INTERVAL '1 month'",
        "SELECT count(*) FROM t WHERE ts > to_timestamp_millis(1) - INTERVAL '1 month'",
        "SELECT count(*) FROM t WHERE nosuch = 1",
        "SELECT count(*) FROM t WHERE ts >= '2026-01-01T00:05:00.0005Z'",
        "SELECT count(*) FROM nosuch",
        "SELECT count(*) FROM t LIMIT 0",
    ] {
        assert!(
            !check(&engine, &reference, sql).await,
            "{sql} took the direct plan"
        );
    }
    // The option turns it off.
    let out = run(&engine, "SELECT count(*) FROM t", false).await.unwrap();
    assert!(!out.direct);
}

/// Upsert tables: only each segment's valid docs count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_valid_docs_are_aggregated() {
    let mut rng = StdRng::seed_from_u64(0x0_95E27);
    let (segments, batches) = segments_and_batches(&mut rng);
    let mut valid = Vec::new();
    let mut kept = Vec::new();
    for (b, seg) in batches.iter().zip(&segments) {
        // Doc ids are the segment's order (sorted by `n`), so the reference rows are read
        // back from the segment.
        let docs: Vec<u32> = (0..b.num_rows() as u32)
            .filter(|_| rng.random_bool(0.6))
            .collect();
        valid.push(Arc::new(docs.iter().copied().collect::<RoaringBitmap>()));
        let all: Vec<usize> = (0..b.num_columns()).collect();
        let rows = seg.read_batch(&all, &docs).unwrap();
        kept.push(rows);
    }
    // One segment with no valid doc at all.
    valid[2] = Arc::new(RoaringBitmap::new());
    kept[2] = kept[2].slice(0, 0);
    let engine = QueryEngine::new(Arc::new(Fixed(TableSnapshot {
        valid,
        name: "t".into(),
        schema: schema(),
        segments: segments.clone(),
    })));
    // DataFusion over the rows still valid.
    let (_, reference) = engine_and_reference(schema(), segments, &kept);
    let mut direct = 0;
    for i in 0..60 {
        let f = random_filter(&mut rng);
        if check(&engine, &reference, &sql_of(LISTS[i % LISTS.len()], &f)).await {
            direct += 1;
        }
    }
    assert!(direct > 30, "only {direct} of 60 took the direct plan");
}

/// A PostgreSQL session gets the direct answer under the schema its describe step reported,
/// and catalog names stay PostgreSQL's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_describes_what_the_direct_plan_answers() {
    let mut rng = StdRng::seed_from_u64(0x96);
    let (segments, batches) = segments_and_batches(&mut rng);
    let (engine, _) = engine_and_reference(schema(), segments, &batches);
    let session = Arc::new(crate::postgres::PgSession::new("basalt", "analytics"));
    let l = QueryLimits::default();
    for sql in [
        "SELECT count(*) FROM t WHERE city = 'Lima'",
        "SELECT count(*) AS events, sum(big), max(ts) FROM t WHERE ok",
        "SELECT count(*) FROM pg_class",
    ] {
        let mut commands = crate::postgres::parse(sql, &l.statement).unwrap();
        let Some(crate::postgres::PgCommand::Query(statement, _)) = commands.pop() else {
            panic!("{sql} is a query");
        };
        let (described, _) = engine.describe_pg(&statement, &session).await.unwrap();
        let out = engine
            .execute_pg(&statement, Vec::new(), &session, &l)
            .await
            .unwrap();
        assert_eq!(out.schema, described, "{sql}");
        assert_eq!(out.direct, !sql.contains("pg_class"), "{sql}");
        assert!(out.batches[0].column(0).is_valid(0));
    }
}

/// Counts the snapshots taken (each one freezes a real-time table's pending rows).
#[derive(Debug)]
struct Counting(TableSnapshot, std::sync::atomic::AtomicUsize);

impl crate::table::TableSource for Counting {
    fn table_names(&self) -> Vec<String> {
        vec![self.0.name.clone()]
    }
    fn schema(&self, name: &str) -> Option<basalt_segment::SegmentSchema> {
        (name == self.0.name).then(|| self.0.schema.clone())
    }
    fn snapshot(&self, name: &str) -> Result<Option<TableSnapshot>, crate::QueryError> {
        self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok((name == self.0.name).then(|| self.0.clone()))
    }
    fn direct_snapshot(&self, name: &str) -> Result<Option<TableSnapshot>, crate::QueryError> {
        self.snapshot(name)
    }
}

/// A statement takes one snapshot, whichever plan answers it: the direct plan checks the
/// statement against the schema before it takes its snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_snapshot_per_query_either_way() {
    let mut rng = StdRng::seed_from_u64(0x1);
    let (segments, _) = segments_and_batches(&mut rng);
    let source = Arc::new(Counting(
        TableSnapshot {
            valid: Vec::new(),
            name: "t".into(),
            schema: schema(),
            segments,
        },
        Default::default(),
    ));
    let engine = QueryEngine::new(source.clone());
    for (sql, direct) in [
        ("SELECT count(*) FROM t WHERE city = 'Lima'", true),
        (
            "SELECT count(*) FROM t WHERE ts > now() - INTERVAL '1 minute'",
            false,
        ),
        ("SELECT count(*) FROM t WHERE n = 'x'", false),
    ] {
        let before = source.1.load(std::sync::atomic::Ordering::Relaxed);
        let out = run(&engine, sql, true).await;
        let taken = source.1.load(std::sync::atomic::Ordering::Relaxed) - before;
        assert_eq!(taken, 1, "{sql}");
        if let Ok(out) = out {
            assert_eq!(out.direct, direct, "{sql}");
        }
    }
}
