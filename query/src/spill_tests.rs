//! The analyst class spills: a sort and an aggregation far larger than the query's memory
//! limit answer exactly when spilling is on (their temporary files under the engine's spill
//! directory, removed afterwards), and fail with a memory error in the dashboard class.

use std::sync::Arc;

use crate::engine::{EngineConfig, QueryEngine, QueryLimits};
use crate::table::{TableSnapshot, TableSource};

#[derive(Debug)]
struct NoTables;

impl TableSource for NoTables {
    fn table_names(&self) -> Vec<String> {
        Vec::new()
    }
    fn snapshot(&self, _: &str) -> Result<Option<TableSnapshot>, crate::QueryError> {
        Ok(None)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analyst_queries_spill_and_dashboard_queries_fail_fast() {
    let dir = tempfile::tempdir().unwrap();
    let engine = QueryEngine::with_config(
        Arc::new(NoTables),
        EngineConfig {
            spill_dir: Some(dir.path().join("spill")),
            ..EngineConfig::default()
        },
    );
    let dashboard = QueryLimits {
        memory_limit: 64 << 20,
        ..QueryLimits::default()
    };
    let analyst = dashboard.analyst(64 << 20, std::time::Duration::from_secs(120));
    for (sql, want) in [
        // A sort of 6M rows (~100 MB; a window over all of them). The rows come from a cross
        // join of two small series (one large series would reserve its whole output first).
        (
            "SELECT max(r), sum(x) FROM (SELECT a.v * 2000 + b.v AS x, row_number() OVER \
             (ORDER BY (a.v * 7919 + b.v) % 1000003, a.v, b.v) AS r \
             FROM generate_series(1, 3000) AS a(v) CROSS JOIN generate_series(1, 2000) AS b(v))",
            "6000000|18012003000000",
        ),
        // 4M groups.
        (
            "SELECT count(*), sum(n) FROM (SELECT (a.v * 2000 + b.v) % 4000000 AS k, count(*) AS n \
             FROM generate_series(1, 3000) AS a(v) CROSS JOIN generate_series(1, 2000) AS b(v) \
             GROUP BY k)",
            "4000000|6000000",
        ),
    ] {
        let e = engine.execute(sql, &dashboard).await.unwrap_err();
        assert!(matches!(e, crate::QueryError::Memory(_)), "{sql}: {e}");
        let out = engine
            .execute(sql, &analyst)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        assert_eq!(crate::tests::render(&out.batches), vec![want.to_string()]);
    }
    // Spill files are gone once the queries are.
    let left: Vec<_> = walk(&dir.path().join("spill"));
    assert!(left.is_empty(), "{left:?}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.path().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}
