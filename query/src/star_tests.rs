//! Star-trees against the rows: GROUP BYs and filters over a star-tree's dimensions answer
//! exactly what DataFusion answers over the same rows as plain Arrow tables, whether the
//! segments' trees answer them (`numSegmentsStarTree` says so) or the rows do
//! (`useStarTree=false`, or a time range that cuts a segment), and EXPLAIN names the trees.

use std::sync::Arc;

use basalt_segment::star_tree::{StarMetric, StarTreeDef};
use basalt_segment::{build_segment, BuildOptions, SegmentReader};
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::engine::QueryLimits;
use crate::tests::{batch, engine_and_reference, explain, render, schema};

const T0: i64 = 1_767_225_600_000; // 2026-01-01
const ROWS: usize = 1_500;

fn star_schema() -> basalt_segment::SegmentSchema {
    let mut s = schema();
    s.star_trees.push(StarTreeDef {
        dimensions: vec!["city".into(), "ok".into(), "n".into()],
        metrics: vec![
            StarMetric::Count,
            StarMetric::Sum("big".into()),
            StarMetric::Min("big".into()),
            StarMetric::Max("lat".into()),
            StarMetric::Sum("n".into()),
            StarMetric::ApproxDistinct("tag".into()),
        ],
        // Small leaves: deep trees with star nodes at every level.
        max_leaf_records: 6,
    });
    s
}

/// A condition on one dimension, or on the time column (which no tree has).
fn condition(rng: &mut StdRng) -> String {
    let city = ["'Paris'", "'Lyon'", "'Oslo'", "'Lima'"][rng.random_range(0..4)];
    match rng.random_range(0..10) {
        0 => format!("city = {city}"),
        1 => format!("city IN ({city}, 'Oslo')"),
        2 => "city IS NULL".into(),
        3 => format!("NOT (city = {city})"),
        4 => "ok".into(),
        5 => "ok IS NOT NULL".into(),
        6 => format!(
            "n BETWEEN {} AND {}",
            rng.random_range(0..10),
            rng.random_range(8..20)
        ),
        7 => format!("(n > {} OR n IS NULL)", rng.random_range(0..20)),
        8 => format!(
            "city LIKE '{}%'",
            ["P", "L", "O", "Q"][rng.random_range(0..4)]
        ),
        // Cuts the first segment: that one is read row by row.
        _ => format!(
            "ts >= to_timestamp_millis({})",
            T0 + rng.random_range(0..ROWS as i64) * 1000
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn star_trees_answer_like_datafusion_over_arrow() {
    let mut rng = StdRng::seed_from_u64(0x57A2);
    let schema = star_schema();
    let opts = BuildOptions {
        block_rows: 256,
        ..BuildOptions::default()
    };
    let mut batches = Vec::new();
    let mut segments = Vec::new();
    for s in 0..3 {
        let b = batch(&mut rng, ROWS, T0 + (s * ROWS) as i64 * 1000);
        let bytes = build_segment(&schema, std::slice::from_ref(&b), &opts).unwrap();
        let seg = SegmentReader::open(Bytes::from(bytes)).unwrap();
        assert_eq!(seg.footer().star_trees.len(), 1);
        segments.push(Arc::new(seg));
        batches.push(b);
    }
    let (engine, reference) = engine_and_reference(schema, segments, &batches);
    let aggs = [
        "count(*)",
        "sum(big)",
        "min(big)",
        "max(lat)",
        "avg(big)",
        "count(big)",
        "sum(n)",
        "avg(n)",
        "approx_distinct(tag)",
    ];
    let dims = ["city", "ok", "n"];
    let off = QueryLimits {
        use_star_tree: false,
        ..QueryLimits::default()
    };
    let mut answered = 0;
    for i in 0..120 {
        let keys: Vec<&str> = dims
            .iter()
            .copied()
            .filter(|_| rng.random_bool(0.5))
            .collect();
        let mut select: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        for a in aggs {
            if rng.random_bool(0.4) {
                select.push(a.into());
            }
        }
        if select.len() == keys.len() {
            select.push("count(*)".into());
        }
        let conds: Vec<String> = (0..rng.random_range(0..3))
            .map(|_| condition(&mut rng))
            .collect();
        let mut sql = format!("SELECT {} FROM t", select.join(", "));
        if !conds.is_empty() {
            sql += &format!(" WHERE {}", conds.join(" AND "));
        }
        if !keys.is_empty() {
            sql += &format!(" GROUP BY {}", keys.join(", "));
        }
        let want = render(&reference.sql(&sql).await.unwrap().collect().await.unwrap());
        let got = engine
            .execute(&sql, &QueryLimits::default())
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        assert_eq!(render(&got.batches), want, "query {i}: {sql}");
        let time_cut = conds.iter().any(|c| c.starts_with("ts"));
        let from_tree = got.stats.num_segments_star_tree;
        if !time_cut {
            // Every segment has the tree and every query here fits it.
            assert_eq!(from_tree, 3, "{sql}");
            answered += 1;
        }
        let raw = engine.execute(&sql, &off).await.unwrap();
        assert_eq!(render(&raw.batches), want, "useStarTree=false: {sql}");
        assert_eq!(raw.stats.num_segments_star_tree, 0);
    }
    assert!(answered > 60, "{answered}");
    // A query the tree reads far fewer records for than the rows it stands for.
    let sql = "SELECT city, count(*), sum(big) FROM t GROUP BY city";
    let out = engine.execute(sql, &QueryLimits::default()).await.unwrap();
    assert_eq!(out.stats.num_segments_star_tree, 3);
    assert!(out.stats.num_docs_scanned < 3 * 20, "{:?}", out.stats);
    assert!(explain(&engine, sql)
        .await
        .contains("star_tree=3/3 segments"));
    // Without GROUP BY over no rows: one row, NULL sums and a zero count (every segment
    // pruned: a city none has, a time range past them all).
    for (sql, trees) in [
        ("SELECT sum(big), count(*), max(lat) FROM t WHERE city = 'Nowhere'", 0),
        (
            "SELECT sum(big), count(*), max(lat) FROM t WHERE ts >= to_timestamp_millis(9999999999999)",
            0,
        ),
    ] {
        let got = engine.execute(sql, &QueryLimits::default()).await.unwrap();
        assert_eq!(render(&got.batches), vec!["NULL|0|NULL"], "{sql}");
        assert_eq!(got.stats.num_segments_star_tree, trees, "{sql}");
    }
    // Not covered: a key that is not a dimension, a metric the tree does not keep.
    for sql in [
        "SELECT tag, count(*) FROM t GROUP BY tag",
        "SELECT city, sum(lat) FROM t GROUP BY city",
        "SELECT city, count(*) FROM t WHERE tag = 't1' GROUP BY city",
        "SELECT city, count(*) FROM t WHERE city = 'Paris' OR ok GROUP BY city",
    ] {
        let got = engine.execute(sql, &QueryLimits::default()).await.unwrap();
        assert_eq!(got.stats.num_segments_star_tree, 0, "{sql}");
        let want = render(&reference.sql(sql).await.unwrap().collect().await.unwrap());
        assert_eq!(render(&got.batches), want, "{sql}");
    }
}
