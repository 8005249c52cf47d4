//! Query classes through the real binary: a sort too large for the dashboard class's memory
//! fails fast there (Pinot 245 / SQLSTATE 53200), and answers in the analyst class, which
//! spills it to disk — asked for with `queryOptions` `workload=analyst` over HTTP and with
//! `SET basalt.workload = 'analyst'` over PostgreSQL. An unknown class is a clear error.

use serde_json::{json, Value};

use crate::harness::Server;

const SORT: &str = "SELECT max(r) FROM (SELECT row_number() OVER \
    (ORDER BY (a.v * 7919 + b.v) % 1000003, a.v, b.v) AS r \
    FROM generate_series(1, 3000) AS a(v) CROSS JOIN generate_series(1, 2000) AS b(v))";

async fn post(c: &reqwest::Client, s: &Server, options: &str) -> (u16, Value) {
    let r = c
        .post(s.url("/query/sql"))
        .json(&json!({"sql": SORT, "queryOptions": options}))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analyst_queries_spill_where_dashboard_queries_fail_fast() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        &dir.path().join("data"),
        Some(
            "[query]\nmemory_limit_bytes = 67108864\nanalyst_memory_limit_bytes = 67108864\n\
             analyst_timeout_ms = 120000\n",
        ),
    );
    let c = reqwest::Client::new();
    let (_, v) = post(&c, &s, "timeoutMs=120000").await;
    assert_eq!(v["exceptions"][0]["errorCode"], 245, "{v}");
    let (_, v) = post(&c, &s, "workload=analyst").await;
    assert_eq!(v["resultTable"]["rows"], json!([[6000000]]), "{v}");
    let (st, v) = post(&c, &s, "workload=batch").await;
    assert_eq!(st, 400, "{v}");
    assert!(v.to_string().contains("dashboard, analyst"), "{v}");

    let (host, port) = s.pg.rsplit_once(':').unwrap();
    let (pg, conn) = tokio_postgres::connect(
        &format!("host={host} port={port} user=basalt dbname=basalt"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    pg.batch_execute("SET statement_timeout = '120s'")
        .await
        .unwrap();
    let e = pg.query_one(SORT, &[]).await.unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some("53200"), "{e}");
    let e = pg
        .batch_execute("SET basalt.workload = 'batch'")
        .await
        .unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some("22023"), "{e}");
    pg.batch_execute("SET basalt.workload = 'analyst'")
        .await
        .unwrap();
    let row = pg.query_one(SORT, &[]).await.unwrap();
    assert_eq!(row.get::<_, i64>(0), 6_000_000);
}
