//! Differential test of joins: random joins between segment tables — inner, left, right,
//! full, semi and anti, with and without filters, over aggregated subqueries (which the scan
//! aggregates itself) and over scans split into several partitions — against DataFusion
//! over the same rows in plain Arrow tables; plans over two tables carry plain strings.

use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int32Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use basalt_segment::{
    build_segment, BuildOptions, ColumnDef, ColumnType, IndexKind, SegmentReader, SegmentSchema,
};
use bytes::Bytes;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::engine::QueryEngine;
use crate::table::{TableSnapshot, TableSource};
use crate::tests::{assert_same, batch, explain, filter, schema};

#[derive(Debug)]
struct Tables(Vec<TableSnapshot>);

impl TableSource for Tables {
    fn table_names(&self) -> Vec<String> {
        self.0.iter().map(|t| t.name.clone()).collect()
    }
    fn snapshot(&self, name: &str) -> Result<Option<TableSnapshot>, crate::QueryError> {
        Ok(self.0.iter().find(|t| t.name == name).cloned())
    }
}

/// A dimension table (no time column): `k` overlaps `t.n` (0..20) partly, with duplicate
/// and null keys.
fn dim_schema() -> SegmentSchema {
    SegmentSchema {
        columns: vec![
            ColumnDef::new("k", ColumnType::Int),
            ColumnDef::new("label", ColumnType::String).with_index(IndexKind::Inverted),
            ColumnDef::new("w", ColumnType::Double),
        ],
        time_column: None,
        star_trees: Vec::new(),
    }
}

fn dim_batch(rng: &mut StdRng, rows: usize) -> RecordBatch {
    let s = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int32, true),
        Field::new("label", DataType::Utf8, true),
        Field::new("w", DataType::Float64, true),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Int32Array::from_iter(
            (0..rows).map(|_| rng.random_bool(0.9).then(|| rng.random_range(5..30))),
        )),
        Arc::new(StringArray::from_iter((0..rows).map(|_| {
            rng.random_bool(0.9)
                .then(|| ["red", "green", "blue"][rng.random_range(0..3)].to_string())
        }))),
        Arc::new(Float64Array::from_iter((0..rows).map(|_| {
            rng.random_bool(0.9)
                .then(|| rng.random_range(0..100) as f64 / 4.0)
        }))),
    ];
    RecordBatch::try_new(s, cols).unwrap()
}

/// `n` random fact batches ten minutes apart from `t0`, the `s`th of `rows(s)` rows, and a
/// segment of each.
fn fact_segments(
    rng: &mut StdRng,
    t0: i64,
    n: usize,
    rows: impl Fn(usize) -> usize,
) -> (Vec<RecordBatch>, Vec<Arc<SegmentReader>>) {
    (0..n)
        .map(|s| {
            let b = batch(rng, rows(s), t0 + s as i64 * 600_000);
            let seg = segment(&schema(), &b);
            (b, seg)
        })
        .unzip()
}

/// A table of `segments` named `name`, nothing deleted.
fn snapshot(name: &str, schema: SegmentSchema, segments: Vec<Arc<SegmentReader>>) -> TableSnapshot {
    TableSnapshot {
        valid: Vec::new(),
        name: name.into(),
        schema,
        segments,
    }
}

/// DataFusion over the same rows in plain Arrow tables, by name.
fn reference_of<const N: usize>(tables: [(&str, Vec<RecordBatch>); N]) -> SessionContext {
    let reference = SessionContext::new();
    for (name, batches) in tables {
        let mem = MemTable::try_new(batches[0].schema(), vec![batches]).unwrap();
        reference.register_table(name, Arc::new(mem)).unwrap();
    }
    reference
}

fn segment(schema: &SegmentSchema, b: &RecordBatch) -> Arc<SegmentReader> {
    let opts = BuildOptions {
        block_rows: 128,
        ..BuildOptions::default()
    };
    let bytes = build_segment(schema, std::slice::from_ref(b), &opts).unwrap();
    Arc::new(SegmentReader::open(Bytes::from(bytes)).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_answer_like_datafusion_over_arrow() {
    let mut rng = StdRng::seed_from_u64(0x10_1215);
    let t0 = 1_767_225_600_000i64;
    let (facts, fact_segs) = fact_segments(&mut rng, t0, 6, |s| 300 + s * 40);
    let (mut dims, mut dim_segs) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        let b = dim_batch(&mut rng, 15);
        dim_segs.push(segment(&dim_schema(), &b));
        dims.push(b);
    }
    // Several partitions per scan, as on a machine with more cores than this one may have.
    let engine = QueryEngine::new(Arc::new(Tables(vec![
        snapshot("t", schema(), fact_segs),
        snapshot("d", dim_schema(), dim_segs),
    ])))
    .with_target_partitions(4);
    // Every join partitioned, as builds too large to broadcast are.
    let partitioned = engine.clone().with_broadcast_join_rows(0);
    let reference = reference_of([("t", facts), ("d", dims)]);

    // (the fact table's name or alias the filter's columns take, the query)
    let shapes = [
        ("t", "SELECT t.city, d.label, t.big, d.w FROM t JOIN d ON t.n = d.k WHERE {f}"),
        ("t", "SELECT t.uid, d.label FROM t LEFT JOIN d ON t.n = d.k AND d.w > 5 WHERE {f}"),
        ("t", "SELECT t.tag, d.k, d.label FROM t RIGHT JOIN d ON t.n = d.k AND {f}"),
        ("t", "SELECT t.n, d.k, d.w FROM t FULL JOIN d ON t.n = d.k AND {f}"),
        ("t", "SELECT count(*), sum(t.big) FROM t WHERE t.n IN (SELECT k FROM d WHERE label = 'red') AND {f}"),
        ("t", "SELECT t.city, count(*) FROM t WHERE NOT EXISTS (SELECT 1 FROM d WHERE d.k = t.n) AND {f} GROUP BY t.city"),
        ("t", "SELECT t.uid FROM t WHERE t.n NOT IN (SELECT k FROM d WHERE k IS NOT NULL) AND {f}"),
        // Aggregated subqueries on both sides of a join (TPC-H Q15, Q17, Q18 shapes): the
        // scan's own aggregation must still feed a partitioned join its hash partitions.
        ("t", "SELECT a.n, a.s, b.c FROM (SELECT n, sum(big) AS s FROM t WHERE {f} GROUP BY n) a \
         JOIN (SELECT n, count(*) AS c FROM t GROUP BY n) b ON a.n = b.n"),
        ("t", "SELECT t.city, t.big FROM t JOIN (SELECT city, max(big) AS m FROM t GROUP BY city) x \
         ON t.city = x.city AND t.big = x.m WHERE {f}"),
        ("t", "SELECT d.label, x.total FROM d JOIN (SELECT n, sum(lat) AS total FROM t WHERE {f} GROUP BY n) x \
         ON d.k = x.n"),
        ("t", "SELECT t.tag, count(*) FROM t JOIN (SELECT tag FROM t GROUP BY tag HAVING count(*) > 2) h \
         ON t.tag = h.tag WHERE {f} GROUP BY t.tag"),
        ("a", "SELECT a.city, b.city, count(*) FROM t a JOIN t b ON a.n = b.n AND a.tag = b.tag WHERE {f} GROUP BY 1, 2"),
        // Trees of three and four inner joins, which are reordered by cost: through a key
        // class (`e.k = d.k` lets e join t directly), with a filter across two inputs.
        ("a", "SELECT a.city, b.tag, d.label FROM t a JOIN t b ON a.uid = b.uid JOIN d ON b.n = d.k \
         WHERE d.label = 'red' AND {f}"),
        ("t", "SELECT t.city, d.label, e.w FROM t JOIN d ON t.n = d.k JOIN d e ON e.k = d.k \
         WHERE e.label = 'blue' AND {f}"),
        ("t", "SELECT count(*), sum(t.big) FROM d, t, d e, t u WHERE t.n = d.k AND e.k = t.n \
         AND u.uid = t.uid AND d.w > e.w AND {f}"),
        // An aggregate joined on a group column and on its result (TPC-H Q02's shape): its
        // input is reduced to the keys of the filtered side.
        ("a", "SELECT a.tag, a.city, x.m FROM t a JOIN (SELECT b.tag, max(b.big) AS m FROM t b \
         JOIN d ON b.n = d.k GROUP BY b.tag) x ON a.tag = x.tag AND a.big = x.m \
         WHERE a.city = 'Oslo' AND {f}"),
        // Repeated subplans, computed once (`shared_subplan`): a WITH table named twice
        // (TPC-H Q15), the same join in the outer query and a scalar subquery with other
        // columns (Q11), and a WITH table joined with itself.
        ("t", "WITH r AS (SELECT n, sum(big) AS s FROM t WHERE {f} GROUP BY n) \
         SELECT r.n, r.s FROM r WHERE r.s = (SELECT max(s) FROM r)"),
        ("t", "SELECT t.n, sum(t.big) AS v FROM t JOIN d ON t.n = d.k WHERE d.label = 'red' AND {f} \
         GROUP BY t.n HAVING sum(t.big) > (SELECT sum(t.big) / 10 FROM t JOIN d ON t.n = d.k \
         WHERE d.label = 'red' AND {f})"),
        ("t", "WITH r AS (SELECT tag, count(*) AS c FROM t WHERE {f} GROUP BY tag) \
         SELECT a.tag, b.tag FROM r a JOIN r b ON a.c = b.c AND a.tag < b.tag"),
    ];
    for i in 0..240 {
        let (q, shape) = shapes[i % shapes.len()];
        let f = match i % 5 {
            0 => "TRUE".to_string(),
            _ => qualify(&filter(&mut rng, t0, 2), q),
        };
        let sql = shape.replace("{f}", &f);
        // Each shape in turn broadcast (small builds) and partitioned.
        let e = [&engine, &partitioned][(i / shapes.len()) % 2];
        assert_same(e, &reference, &sql).await;
    }
    // The aggregated side of a partitioned join is the scan's own aggregation.
    let plan = explain(
        &partitioned,
        "SELECT a.n, a.s, b.c FROM (SELECT n, sum(big) AS s FROM t GROUP BY n) a \
         JOIN (SELECT n, count(*) AS c FROM t GROUP BY n) b ON a.n = b.n",
    )
    .await;
    assert!(plan.contains("SegmentAggregateExec"), "{plan}");
    // Across tables, strings leave the scan plain (not dictionary-encoded); a filter on
    // them still reaches the segment's index.
    let plan = explain(
        &engine,
        "SELECT t.city, d.label FROM t JOIN d ON t.n = d.k WHERE t.city = 'Oslo'",
    )
    .await;
    assert!(plan.contains("CAST(t.city AS Utf8)"), "{plan}");
    assert!(
        plan.contains("predicate=Some(Compare { column: \"city\""),
        "{plan}"
    );
    // Segment row counts reach the join planner: the small table builds the hash table
    // (the join's first child) whichever side of the SQL it is written on.
    for sql in [
        "SELECT count(*) FROM t JOIN d ON t.n = d.k",
        "SELECT count(*) FROM d JOIN t ON t.n = d.k",
    ] {
        let plan = explain(&engine, sql).await;
        let join = plan.find("HashJoinExec").expect("a hash join");
        let build = plan[join..]
            .find("SegmentScanExec: table=")
            .expect("a scan")
            + join;
        assert!(
            plan[build..].starts_with("SegmentScanExec: table=d"),
            "{sql}:\n{plan}"
        );
    }
    // Inner joins are ordered by cost: written `(a ⋈ b) ⋈ d`, the filtered dimension meets
    // one side first (through the key class `a.n = b.n = d.k`), not the many-to-many join.
    let plan = explain(
        &engine,
        "SELECT count(*) FROM t a JOIN t b ON a.n = b.n JOIN d ON b.n = d.k WHERE d.label = 'red'",
    )
    .await;
    let logical = &plan[..plan.find("physical_plan").unwrap_or(plan.len())];
    let innermost = logical.lines().rfind(|l| l.contains("Inner Join"));
    assert!(innermost.is_some_and(|l| l.contains("d.k")), "{plan}");
    // The aggregate of Q02's shape is computed for the filtered side's keys only.
    let plan = explain(
        &engine,
        "SELECT a.tag, x.m FROM t a JOIN (SELECT b.tag, max(b.big) AS m FROM t b \
         JOIN d ON b.n = d.k GROUP BY b.tag) x ON a.tag = x.tag AND a.big = x.m \
         WHERE a.city = 'Oslo' AND a.n = 3",
    )
    .await;
    assert!(
        plan.contains("LeftSemi Join: b.tag = __key_reducer"),
        "{plan}"
    );
    let plan = explain(&engine, "SELECT city FROM t WHERE city = 'Oslo'").await;
    assert!(
        !plan.contains("CAST("),
        "one table keeps its dictionaries: {plan}"
    );
}

/// `f` with every fact-table column outside string literals qualified by `q`.
fn qualify(f: &str, q: &str) -> String {
    const COLUMNS: &[&str] = &["ts", "city", "tag", "n", "big", "lat", "ok", "uid"];
    let mut out = String::with_capacity(f.len() * 2);
    let mut chars = f.chars().peekable();
    let mut in_string = false;
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            if c == '\'' {
                in_string = false;
            }
        } else if c == '\'' {
            in_string = true;
            out.push(c);
        } else if c.is_ascii_alphabetic() || c == '_' {
            let mut word = c.to_string();
            while let Some(&n) = chars.peek() {
                if !(n.is_ascii_alphanumeric() || n == '_') {
                    break;
                }
                word.push(n);
                chars.next();
            }
            if COLUMNS.contains(&word.as_str()) && !out.ends_with('.') {
                out.push_str(q);
                out.push('.');
            }
            out.push_str(&word);
        } else {
            out.push(c);
        }
    }
    out
}

/// A hash join's build side filters the probe side's scan: its bounds and key set reach the
/// segment predicate (zone maps and segment statistics prune with them), and a key set the
/// predicate cannot hold is checked on the key column before the other columns are read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_build_side_filters_the_probe_scan() {
    use arrow::array::Int64Array;
    use datafusion::arrow::util::pretty::pretty_format_batches;
    let fact_schema = fact_schema_named("v");
    let arrow_fact = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, true),
        Field::new("v", DataType::Int64, true),
    ]));
    // Four segments of 5,000 rows, keys ascending: segment and block ranges follow them.
    let facts: Vec<RecordBatch> = (0..4i64)
        .map(|s| {
            let k: Vec<i64> = (s * 5000..(s + 1) * 5000).collect();
            let v: Vec<i64> = k.iter().map(|k| k % 97).collect();
            RecordBatch::try_new(
                arrow_fact.clone(),
                vec![
                    Arc::new(Int64Array::from(k)) as ArrayRef,
                    Arc::new(Int64Array::from(v)),
                ],
            )
            .unwrap()
        })
        .collect();
    let fact_segs: Vec<_> = facts.iter().map(|b| segment(&fact_schema, b)).collect();
    let dim = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int32, true),
            Field::new("label", DataType::Utf8, true),
            Field::new("w", DataType::Float64, true),
        ])),
        vec![
            Arc::new(Int32Array::from(vec![100, 101, 102, 15_000, 15_001])) as ArrayRef,
            Arc::new(StringArray::from(vec!["a", "a", "b", "c", "c"])),
            Arc::new(Float64Array::from(vec![1.0, 2.0, 3.0, 4.0, 5.0])),
        ],
    )
    .unwrap();
    let reference = reference_of([("f", facts.clone()), ("d", vec![dim.clone()])]);
    for partitions in [1, 4] {
        let engine = QueryEngine::new(Arc::new(Tables(vec![
            snapshot("f", fact_schema.clone(), fact_segs.clone()),
            snapshot("d", dim_schema(), vec![segment(&dim_schema(), &dim)]),
        ])))
        .with_target_partitions(partitions);
        let sql = "SELECT f.k, f.v, d.w FROM f JOIN d ON f.k = d.k WHERE d.label = 'a'";
        let plan = explain(&engine, sql).await;
        assert!(plan.contains("dynamic_filters=[DynamicFilter"), "{plan}");
        assert_same(&engine, &reference, sql).await;
        // Two fact rows match; the dimension side reads its 5 rows. Without the dynamic
        // filter all 20,000 fact rows would be scanned.
        let out = engine
            .execute(sql, &crate::QueryLimits::default())
            .await
            .unwrap();
        assert_eq!(out.num_rows(), 2);
        // With several probe partitions, DataFusion releases them from the build barrier
        // while its leader is still writing the filter: a partition may read its first batch
        // (here a whole 5,000-row segment) unfiltered; the leader's is always filtered.
        let s = &out.stats;
        let unfiltered = if partitions == 1 { 0 } else { 3 * 5000 };
        assert!(
            s.num_docs_scanned - s.docs_removed_by_dynamic_filters <= 2 + 5 + unfiltered,
            "{partitions} partitions: {s:?}\n{}",
            pretty_format_batches(&out.batches).unwrap()
        );
        // Keys far apart: the bounds alone keep most of the range; the key set (an IN
        // list or the hash table) removes the rest before `v` is read. The answer is exact.
        for sql in [
            "SELECT f.k, f.v, d.w FROM f JOIN d ON f.k = d.k WHERE d.label IN ('a', 'c')",
            "SELECT sum(f.v), count(*) FROM f JOIN d ON f.k = d.k",
            "SELECT f.k FROM f WHERE f.k IN (SELECT k FROM d WHERE w > 2)",
            "SELECT count(*) FROM f LEFT JOIN d ON f.k = d.k",
        ] {
            assert_same(&engine, &reference, sql).await;
        }
        // A semi join (the IN subquery) runs as an inner join over its build's distinct
        // keys, so its probe scan is filtered too: 3 of the 20,000 fact rows match.
        let sql = "SELECT f.k, f.v FROM f WHERE f.k IN (SELECT k FROM d WHERE w > 2)";
        let plan = explain(&engine, sql).await;
        assert!(plan.contains("dynamic_filters=[DynamicFilter"), "{plan}");
        let out = engine
            .execute(sql, &crate::QueryLimits::default())
            .await
            .unwrap();
        assert_eq!(out.num_rows(), 3);
        let s = &out.stats;
        assert!(
            s.num_docs_scanned - s.docs_removed_by_dynamic_filters <= 3 + 5 + unfiltered,
            "{partitions} partitions: {s:?}\n{plan}"
        );
    }
    // Join estimates: `f.v` holds 97 values, each ~200 times. With row counts alone the
    // planner takes `g JOIN f ON g.k = f.v` for 97 rows (rows over the larger side's row
    // count); the segments' distinct counts (dictionary sizes, HyperLogLog estimates) make it
    // thousands, as it is (20,000).
    let g_batch = RecordBatch::try_new(
        arrow_fact.clone(),
        vec![
            Arc::new(Int64Array::from_iter_values(0..97)) as ArrayRef,
            Arc::new(Int64Array::from_iter_values(0..97)),
        ],
    )
    .unwrap();
    reference
        .register_table(
            "g",
            Arc::new(MemTable::try_new(arrow_fact.clone(), vec![vec![g_batch.clone()]]).unwrap()),
        )
        .unwrap();
    let fg_engine = |partitions: usize| {
        QueryEngine::new(Arc::new(Tables(vec![
            snapshot("f", fact_schema.clone(), fact_segs.clone()),
            snapshot(
                "g",
                fact_schema.clone(),
                vec![segment(&fact_schema, &g_batch)],
            ),
        ])))
        .with_target_partitions(partitions)
    };
    let engine = fg_engine(2);
    let sql = "SELECT g.v, f.k FROM g JOIN f ON g.k = f.v";
    let plan = engine.physical_plan(sql).await.unwrap();
    let mut estimate = None;
    plan.apply(|node| {
        if node.name() == "HashJoinExec" {
            estimate = node
                .partition_statistics(None)?
                .num_rows
                .get_value()
                .copied();
        }
        Ok(TreeNodeRecursion::Continue)
    })
    .unwrap();
    let estimate = estimate.expect("a hash join with an estimate");
    assert!((2_000..=40_000).contains(&estimate), "{estimate}");
    assert_same(&engine, &reference, sql).await;
    // TPC-H Q18's shape: that join semi-joined with the keys a HAVING keeps. DataFusion
    // takes the aggregate for as many groups as rows and hashes the join; with the scan's
    // own aggregation estimated from `v`'s distinct values the aggregate is hashed instead.
    for partitions in [2, 4] {
        let engine = fg_engine(partitions);
        let sql = "SELECT count(*), sum(f.k) FROM g JOIN f ON g.k = f.v WHERE f.v IN \
                   (SELECT v FROM f GROUP BY v HAVING count(*) > 206)";
        let plan = explain(&engine, sql).await;
        // Broadcast, the semi join is an inner join over the subquery's distinct keys.
        assert!(
            plan.contains("join_type=RightSemi") || plan.contains("as __semi_key_0"),
            "{plan}"
        );
        assert_same(&engine, &reference, sql).await;
    }
    // The semi join with a HAVING subquery moves below the inner join, onto `f`, whose
    // columns it reads; the answers stay DataFusion's.
    let engine = fg_engine(2);
    for sql in [
        "SELECT count(*), sum(f.k) FROM g JOIN f ON g.k = f.v WHERE f.k IN \
         (SELECT k FROM f GROUP BY k HAVING sum(v) > 90)",
        "SELECT g.v, f.k FROM g JOIN f ON g.k = f.v WHERE f.k IN \
         (SELECT k FROM f GROUP BY k HAVING sum(v) > 95) AND g.k IN \
         (SELECT v FROM f GROUP BY v HAVING count(*) > 206) ORDER BY f.k",
    ] {
        let plan = explain(&engine, sql).await;
        let logical = plan.split("physical_plan").next().unwrap_or_default();
        let (inner, semi) = (logical.find("Inner Join"), logical.find("LeftSemi Join"));
        assert!(
            matches!((inner, semi), (Some(i), Some(s)) if i < s),
            "{plan}"
        );
        assert_same(&engine, &reference, sql).await;
    }

    // A build side too large for an IN list (14,000 keys: a fifth of 70,000, every 7th up
    // to 490,000): the scan
    // checks the fact keys against the join's hash table(s) and reads `v` only for the
    // seventh that can match.
    let big = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, true),
            Field::new("z", DataType::Int64, true),
        ])),
        vec![
            Arc::new(Int64Array::from_iter_values((0..70_000).map(|i| i * 7))) as ArrayRef,
            Arc::new(Int64Array::from_iter_values((0..70_000).map(|i| i % 5))),
        ],
    )
    .unwrap();
    let mem = MemTable::try_new(big.schema(), vec![vec![big.clone()]]).unwrap();
    reference.register_table("b", Arc::new(mem)).unwrap();
    for partitions in [1, 4] {
        let engine = QueryEngine::new(Arc::new(Tables(vec![
            snapshot("f", fact_schema.clone(), fact_segs.clone()),
            snapshot(
                "b",
                fact_schema_named("z"),
                vec![segment(&fact_schema_named("z"), &big)],
            ),
        ])))
        .with_target_partitions(partitions)
        .with_join_key_list_max(4_096);
        // `b.z < 1` keeps a fifth of b's rows (14,000 < 20,000, as the footers' bounds of `z`
        // estimate it), so b is the build side, with 14,000 keys (every 35th).
        let sql = "SELECT count(*), sum(f.v), sum(b.z) FROM f JOIN b ON f.k = b.k WHERE b.z < 1";
        assert_same(&engine, &reference, sql).await;
        let out = engine
            .execute(sql, &crate::QueryLimits::default())
            .await
            .unwrap();
        // 20,000 fact rows, at most 2,858 of them keys of `b` (every 7th up to 490,000): at
        // most those, and b's rows, leave the scans. One partition: the 14,000 keys are too
        // many for an IN list,
        // so the hash-table lookup runs on `k` in the scan.
        // (With four, the probe side's exchange may read these one-batch segments before
        // the partitioned build is done: only the answer is checked then.)
        let s = &out.stats;
        if partitions == 1 {
            assert!(
                s.num_docs_scanned - s.docs_removed_by_dynamic_filters <= 2_858 + 70_000,
                "{s:?}"
            );
            assert!(s.docs_removed_by_dynamic_filters >= 17_000, "{s:?}");
        }
        // TPC-H Q17's shape: the probe side is the scan's own aggregation of `f` by the
        // join key. It checks the keys against the hash table before aggregating, so it
        // groups the rows that can match, not 20,000.
        let sql = "SELECT count(*), sum(x.s), sum(b.z) FROM b JOIN \
                   (SELECT k, sum(v) AS s FROM f GROUP BY k) x ON b.k = x.k WHERE b.z < 1";
        let plan = explain(&engine, sql).await;
        assert!(plan.contains("SegmentAggregateExec"), "{plan}");
        assert_same(&engine, &reference, sql).await;
        let out = engine
            .execute(sql, &crate::QueryLimits::default())
            .await
            .unwrap();
        if partitions == 1 {
            assert!(
                out.stats.docs_removed_by_dynamic_filters >= 17_000,
                "{:?}",
                out.stats
            );
        }
    }
}

/// `k LONG` and one more LONG column named `other`.
fn fact_schema_named(other: &str) -> SegmentSchema {
    SegmentSchema {
        columns: vec![
            ColumnDef::new("k", ColumnType::Long),
            ColumnDef::new(other, ColumnType::Long),
        ],
        time_column: None,
        star_trees: Vec::new(),
    }
}

/// A subplan the SQL repeats runs once: a WITH table named twice (TPC-H Q15) and a scalar
/// subquery over the outer query's join with fewer columns (Q11) each read the fact table's
/// segments once, with the answers DataFusion gives computing both; a volatile function
/// keeps its occurrences apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_subplans_run_once() {
    let mut rng = StdRng::seed_from_u64(0x5A4ED);
    let t0 = 1_767_225_600_000i64;
    let (facts, fact_segs) = fact_segments(&mut rng, t0, 5, |_| 400);
    let dims = dim_batch(&mut rng, 30);
    let reference = reference_of([("t", facts), ("d", vec![dims.clone()])]);
    for partitions in [1, 3] {
        let engine = QueryEngine::new(Arc::new(Tables(vec![
            snapshot("t", schema(), fact_segs.clone()),
            snapshot("d", dim_schema(), vec![segment(&dim_schema(), &dims)]),
        ])))
        .with_target_partitions(partitions);
        for (sql, shared) in [
            (
                "WITH r AS (SELECT n, sum(big) AS s FROM t GROUP BY n) \
                 SELECT r.n, r.s FROM r WHERE r.s = (SELECT max(s) FROM r)",
                true,
            ),
            (
                "SELECT t.n, sum(t.big) AS v FROM t JOIN d ON t.n = d.k WHERE d.label = 'red' \
                 GROUP BY t.n HAVING sum(t.big) > (SELECT sum(t.big) / 10 FROM t JOIN d \
                 ON t.n = d.k WHERE d.label = 'red')",
                true,
            ),
            (
                "WITH r AS (SELECT n, sum(big) AS s FROM t WHERE random() < 2 GROUP BY n) \
                 SELECT r.n, r.s FROM r WHERE r.s = (SELECT max(s) FROM r)",
                false,
            ),
        ] {
            let plan = explain(&engine, sql).await;
            let occurrences = plan.matches("SharedExec: id=0").count();
            assert_eq!(occurrences, if shared { 2 } else { 0 }, "{sql}\n{plan}");
            assert_same(&engine, &reference, sql).await;
            let out = engine
                .execute(sql, &crate::QueryLimits::default())
                .await
                .unwrap();
            // The fact table's five segments, once per computation (and the dimension's one).
            let segments = out.stats.num_segments_queried;
            let want = if shared { 5..=6 } else { 10..=12 };
            assert!(want.contains(&segments), "{sql}: {:?}", out.stats);
        }
    }
}
