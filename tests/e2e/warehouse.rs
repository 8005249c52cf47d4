//! The warehouse tier through the real binary: 200,000 events over 10 days in a table whose
//! spec tiers segments older than 3 days into an Iceberg table (SQL catalog on SQLite, a
//! `file://` warehouse); queries spanning both tiers against DuckDB over all rows, the
//! tiered table read by pyiceberg and DuckDB's `iceberg_scan` (`tests/clients/
//! warehouse_check.py`), the hot range reading no Iceberg file, PostgreSQL answering as
//! HTTP does, a restart; then a kill -9 at each step of a tiering run and a restart: exactly
//! the events ingested, in Basalt and in the Iceberg table.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{
    create_table, get_json, repo_path, scalar, service_env, sql, succeeded, Server,
};

const DAY_MS: u64 = 86_400_000;

fn config(dir: &Path) -> String {
    format!(
        "[storage]\nallowed_roots = [\"file://{}\"]\n[tables]\ntier_interval_secs = 3600\n",
        dir.display()
    )
}

/// The events spec with a warehouse block; segments of `max_rows`.
fn spec(dir: &Path, max_rows: u64) -> String {
    let mut v: Value = serde_json::from_str(basalt_ingest::gen::EVENTS_SPEC).unwrap();
    v["segment"] = json!({ "max_rows": max_rows });
    v["warehouse"] = json!({
        "iceberg": {
            "catalog": {
                "type": "sql",
                "uri": format!("sqlite://{}/iceberg.db", dir.display()),
                "warehouse": format!("file://{}/warehouse", dir.display()),
            },
            "namespace": "analytics",
            "table": "events"
        },
        "tier_after": "3d"
    });
    v.to_string()
}

async fn ingest(c: &reqwest::Client, s: &Server, file: &Path, rows: u64) {
    let r = c
        .post(s.url("/tables/events/ingest"))
        .header("content-type", "application/vnd.apache.parquet")
        .body(std::fs::read(file).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({ "rows": rows }));
}

async fn tier(c: &reqwest::Client, s: &Server) -> Value {
    let r = c.post(s.url("/tables/events/tier")).send().await.unwrap();
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{v}");
    v
}

/// Runs `warehouse_check.py` in an external mode; its JSON answer.
fn external(python: &str, mode: &str, dir: &Path) -> Value {
    let out = Command::new(python)
        .arg(repo_path("tests/clients/warehouse_check.py"))
        .arg(mode)
        .arg("--catalog")
        .arg(dir.join("iceberg.db"))
        .arg("--warehouse")
        .arg(dir.join("warehouse"))
        .output()
        .unwrap();
    serde_json::from_str(succeeded(&out).trim()).unwrap()
}

/// A table over `lake.orders` (written by pyiceberg) answers as pyiceberg reads it, over
/// HTTP and PostgreSQL, refuses ingests, and sees another writer's commit.
async fn source_iceberg(c: &reqwest::Client, s: &Server, python: &str, dir: &Path) {
    let made = external(python, "make-external", dir);
    let spec = json!({"name": "orders", "source": {"iceberg": {
        "catalog": {"type": "sql", "uri": format!("sqlite://{}/iceberg.db", dir.display()),
                    "warehouse": format!("file://{}/warehouse", dir.display())},
        "namespace": "lake", "table": "orders"}}});
    create_table(c, s, &spec.to_string()).await;
    let t = get_json(c, s, "/tables/orders").await;
    let types: Vec<(String, String)> = t["spec"]["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().into(),
                c["type"].as_str().unwrap().into(),
            )
        })
        .collect();
    let want = [
        ("id", "LONG"),
        ("customer", "STRING"),
        ("amount", "DOUBLE"),
        ("ordered_at", "TIMESTAMP"),
        ("day", "DATE"),
        ("price", "DECIMAL(10, 2)"),
    ];
    assert_eq!(
        types,
        want.map(|(a, b)| (a.to_string(), b.to_string())),
        "columns from the Iceberg schema: {t}"
    );
    let v = sql(c, s, "SELECT count(*), round(sum(amount), 2) FROM orders").await;
    assert_eq!(
        v["resultTable"]["rows"][0],
        json!([made["rows"], made["amount"]]),
        "{v}"
    );
    let v = sql(
        c,
        s,
        "SELECT customer, count(*) FROM orders GROUP BY customer ORDER BY customer",
    )
    .await;
    assert_eq!(v["resultTable"]["rows"], made["by_customer"], "{v}");
    let v = sql(
        c,
        s,
        "SELECT count(*) FROM orders WHERE ordered_at >= TIMESTAMP '2026-11-02 00:00:00' \
         AND day < DATE '2026-11-03' AND price > 5",
    )
    .await;
    // Minutes 1440..2879 of the first 5000 ids, with id % 1000 > 500.
    let expect = (1440..2880).filter(|i| i % 1000 > 500).count();
    assert_eq!(v["resultTable"]["rows"][0][0], json!(expect), "{v}");
    let (host, port) = s.pg.rsplit_once(':').unwrap();
    let (pg, conn) = tokio_postgres::connect(
        &format!("host={host} port={port} user=basalt"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let n: i64 = pg
        .query_one("SELECT count(*) FROM orders", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(json!(n), made["rows"]);
    let r = c
        .post(s.url("/tables/orders/ingest"))
        .header("content-type", "application/x-ndjson")
        .body("{\"id\": 1}\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 409, "read-only");
    let appended = external(python, "append-external", dir);
    crate::harness::wait_for(
        "another writer's commit",
        Duration::from_secs(10),
        || async {
            let v = sql(c, s, "SELECT count(*) FROM orders").await;
            (v["resultTable"]["rows"][0][0] == appended["rows"]).then_some(())
        },
    )
    .await;
    // A catalog outside the allowed roots is refused before it is opened.
    let mut bad = spec.clone();
    bad["name"] = json!("elsewhere");
    bad["source"]["iceberg"]["catalog"]["uri"] = json!("sqlite:///etc/iceberg.db");
    refused(c, s, &bad, "source.iceberg.catalog.uri").await;
    assert!(!Path::new("/etc/iceberg.db").exists());
}

/// Posting `spec` is a 400 naming `field`.
async fn refused(c: &reqwest::Client, s: &Server, spec: &Value, field: &str) {
    let r = c
        .post(s.url("/tables"))
        .header("content-type", "application/json")
        .body(spec.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let body = r.text().await.unwrap();
    assert!(body.contains(field), "{body} should name {field}");
}

fn check(python: &str, args: &[&str]) {
    let out = Command::new(python)
        .arg(repo_path("tests/clients/warehouse_check.py"))
        .args(args)
        .output()
        .unwrap();
    let stdout = succeeded(&out);
    assert!(stdout.contains("warehouse checks passed"), "{stdout}");
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiered_tables_answer_as_duckdb_and_iceberg_readers_agree() {
    let Some(python) = service_env(
        "BASALT_TEST_WAREHOUSE",
        "tiered_tables_answer_as_duckdb_and_iceberg_readers_agree",
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = config(dir.path());
    let s = Server::start(&data, Some(&cfg));
    let c = reqwest::Client::new();
    const ROWS: u64 = 200_000;
    let file = crate::harness::gen_events_parquet(dir.path(), ROWS, 10 * DAY_MS / ROWS);
    create_table(&c, &s, &spec(dir.path(), 10_000)).await;
    ingest(&c, &s, &file, ROWS).await;
    let before = get_json(&c, &s, "/tables/events").await;
    assert_eq!(before["warehouse"]["boundary"], Value::Null, "{before}");

    let run = tier(&c, &s).await;
    assert_eq!(run["moved"], json!(true), "{run}");
    let moved = run["rows"].as_u64().unwrap();
    // About 7 of the 10 days are older than 3 days (whole segments of 12 hours each).
    assert!((120_000..=150_000).contains(&moved), "{run}");
    let t = get_json(&c, &s, "/tables/events").await;
    let w = &t["warehouse"];
    assert_eq!(w["rows"], json!(moved), "{t}");
    assert_eq!(w["snapshot_id"], run["snapshot_id"], "{t}");
    assert!(
        w["data_files"].as_u64().unwrap() >= 7,
        "one file per day at least: {t}"
    );
    assert_eq!(
        t["stats"]["rows"],
        json!(ROWS - moved),
        "segments keep the rest: {t}"
    );
    let boundary = w["boundary"].as_i64().unwrap();
    // Nothing more is old enough.
    assert_eq!(tier(&c, &s).await["moved"], json!(false));

    // The hot range never opens the Iceberg table; the cold range reads its files.
    let hot = sql(
        &c,
        &s,
        &format!("SELECT count(*) FROM events WHERE ts >= to_timestamp_millis({boundary})"),
    )
    .await;
    assert_eq!(hot["numWarehouseFilesQueried"], json!(0), "{hot}");
    assert_eq!(
        hot["resultTable"]["rows"][0][0],
        json!(ROWS - moved),
        "{hot}"
    );
    // The whole cold range: `count(*)` from the manifests (every file's rows are below the
    // boundary), a counted column from the files themselves.
    let cold = sql(
        &c,
        &s,
        &format!(
            "SELECT count(*), count(event_id) FROM events WHERE ts < to_timestamp_millis({boundary})"
        ),
    )
    .await;
    assert!(
        cold["numWarehouseFilesQueried"].as_u64().unwrap() > 0,
        "{cold}"
    );
    assert_eq!(
        cold["resultTable"]["rows"][0],
        json!([moved, moved]),
        "{cold}"
    );
    let cold = sql(
        &c,
        &s,
        &format!("SELECT count(*) FROM events WHERE ts < to_timestamp_millis({boundary})"),
    )
    .await;
    assert_eq!(cold["numWarehouseFilesQueried"], json!(0), "{cold}");
    assert_eq!(cold["resultTable"]["rows"][0][0], json!(moved), "{cold}");
    // A one-day slice of the cold range prunes the other days' files.
    let day = sql(
        &c,
        &s,
        &format!(
            "SELECT count(*) FROM events WHERE ts >= to_timestamp_millis({}) AND ts < to_timestamp_millis({})",
            boundary - 3 * DAY_MS as i64,
            boundary - 2 * DAY_MS as i64
        ),
    )
    .await;
    let all_files = w["data_files"].as_u64().unwrap();
    let read = day["numWarehouseFilesQueried"].as_u64().unwrap();
    assert!(read > 0 && read < all_files, "{read} of {all_files}: {day}");
    // A count of whole tiered days comes from the manifests' row counts without reading a
    // file; counting a column (every event has an id) reads them and agrees.
    let midnight = boundary - boundary.rem_euclid(DAY_MS as i64);
    let whole = format!(
        "FROM events WHERE ts >= to_timestamp_millis({}) AND ts < to_timestamp_millis({})",
        midnight - 5 * DAY_MS as i64,
        midnight - DAY_MS as i64
    );
    let counted = sql(&c, &s, &format!("SELECT count(*) {whole}")).await;
    assert_eq!(counted["numWarehouseFilesQueried"], json!(0), "{counted}");
    let read = sql(&c, &s, &format!("SELECT count(event_id) {whole}")).await;
    assert!(
        read["numWarehouseFilesQueried"].as_u64().unwrap() > 0,
        "{read}"
    );
    let n = &counted["resultTable"]["rows"][0][0];
    assert!(n.as_u64().unwrap() > 0, "{counted}");
    assert_eq!(n, &read["resultTable"]["rows"][0][0], "{counted} {read}");

    let url = s.base.clone();
    let catalog = format!("{}/iceberg.db", dir.path().display());
    let warehouse = format!("{}/warehouse", dir.path().display());
    let now = now_ms().to_string();
    check(
        &python,
        &[
            "compare",
            "--basalt",
            &url,
            "--catalog",
            &catalog,
            "--warehouse",
            &warehouse,
            "--parquet",
            file.to_str().unwrap(),
            "--now-ms",
            &now,
        ],
    );

    // PostgreSQL answers over both tiers as HTTP does.
    let (client, conn) = tokio_postgres::connect(
        &format!(
            "host={} port={} user=basalt",
            s.pg.rsplit_once(':').unwrap().0,
            s.pg.rsplit_once(':').unwrap().1
        ),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let row = client
        .query_one("SELECT count(*), count(DISTINCT event_id) FROM events", &[])
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, i64>(0), row.get::<_, i64>(1)),
        (ROWS as i64, ROWS as i64)
    );

    let m = crate::harness::get_text(&c, &s, "/metrics").await;
    assert!(
        m.contains(&format!(
            "basalt_warehouse_tiered_rows_total{{table=\"events\"}} {moved}"
        )),
        "metrics count the tiered rows"
    );

    // The semantic layer splits a range at the boundary and answers both parts.
    let model = "model: ev\ntable: events\ntime_dimension: ts\ndimensions: [device]\nmeasures:\n  - {name: n, agg: count}\n  - {name: revenue, agg: sum, expr: revenue}\n";
    let (status, body) = crate::semantic::post_model(&c, &s, "application/yaml", model).await;
    assert_eq!(status, 201, "{body}");
    let iso = |ms: i64| {
        chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
            .unwrap()
            .format("%Y-%m-%d %H:%M:%S")
            .to_string()
    };
    let (from, to) = (boundary - 2 * DAY_MS as i64, boundary + DAY_MS as i64);
    let (status, v) = crate::semantic::semantic(
        &c,
        &s,
        json!({"model": "ev", "measures": ["n"], "dimensions": ["device"],
               "from": iso(from), "to": iso(to)}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let tiers = &v["semantic"]["tiers"];
    assert_eq!(tiers[0]["tier"], json!("warehouse"), "{v}");
    assert_eq!(tiers[1]["tier"], json!("segments"), "{v}");
    assert_eq!(
        tiers[0]["to"], tiers[1]["from"],
        "no range dropped at the split: {v}"
    );
    let by_hand = sql(
        &c,
        &s,
        &format!(
            "SELECT device, count(*) FROM events WHERE ts >= to_timestamp_millis({}) \
             AND ts < to_timestamp_millis({}) GROUP BY device ORDER BY device",
            from / 1000 * 1000,
            to / 1000 * 1000
        ),
    )
    .await;
    let mut got = v["resultTable"]["rows"].as_array().unwrap().clone();
    got.sort_by_key(|r| r[0].as_str().unwrap().to_string());
    assert_eq!(json!(got), by_hand["resultTable"]["rows"], "{v}");

    source_iceberg(&c, &s, &python, dir.path()).await;

    // A restart reads the same state.
    s.kill();
    let s = Server::start(&data, Some(&cfg));
    assert_eq!(
        scalar(&c, &s, "SELECT count(*) FROM events").await,
        json!(ROWS)
    );
    let t2 = get_json(&c, &s, "/tables/events").await;
    assert_eq!(t2["warehouse"], t["warehouse"]);
    assert_eq!(
        scalar(&c, &s, "SELECT count(*) FROM orders").await,
        json!(6000)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_each_tiering_step_loses_and_duplicates_nothing() {
    let Some(python) = service_env(
        "BASALT_TEST_WAREHOUSE",
        "kill_9_at_each_tiering_step_loses_and_duplicates_nothing",
    ) else {
        return;
    };
    const ROWS: u64 = 20_000;
    for point in [
        "tier.after_parquet",
        "tier.after_iceberg_commit",
        "tier.after_metastore_commit",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let cfg = config(dir.path());
        let c = reqwest::Client::new();
        let file = crate::harness::gen_events_parquet(dir.path(), ROWS, 10 * DAY_MS / ROWS);
        let failpoint = format!("{point}=abort");
        let mut s = Server::start_with(&data, Some(&cfg), &[("BASALT_FAILPOINTS", &failpoint)]);
        create_table(&c, &s, &spec(dir.path(), 1_000)).await;
        ingest(&c, &s, &file, ROWS).await;
        let r = c.post(s.url("/tables/events/tier")).send().await;
        assert!(
            r.is_err(),
            "{point}: the tiering request should die with the process"
        );
        crate::harness::wait_for(
            &format!("{point} to abort the server"),
            Duration::from_secs(20),
            || {
                let exited = s.exited();
                async move { exited.then_some(()) }
            },
        )
        .await;
        drop(s);

        let s = Server::start(&data, Some(&cfg));
        let run = tier(&c, &s).await;
        match point {
            "tier.after_iceberg_commit" => assert_eq!(run["recovered"], json!(true), "{run}"),
            "tier.after_metastore_commit" => assert_eq!(run["moved"], json!(false), "{run}"),
            _ => assert_eq!(run["recovered"], json!(false), "{run}"),
        }
        let counts = sql(
            &c,
            &s,
            "SELECT count(*), count(DISTINCT event_id) FROM events",
        )
        .await;
        assert_eq!(
            counts["resultTable"]["rows"][0],
            json!([ROWS, ROWS]),
            "{point}: {counts}"
        );
        let w = get_json(&c, &s, "/tables/events").await["warehouse"].clone();
        let tiered = w["rows"].as_u64().unwrap();
        assert!(tiered > 0, "{point}: {w}");
        let url = s.base.clone();
        let catalog = format!("{}/iceberg.db", dir.path().display());
        let warehouse = format!("{}/warehouse", dir.path().display());
        check(
            &python,
            &[
                "readers",
                "--basalt",
                &url,
                "--catalog",
                &catalog,
                "--warehouse",
                &warehouse,
                "--expect-rows",
                &tiered.to_string(),
            ],
        );
    }
}

/// The same tier over a REST catalog (SeaweedFS's, OAuth2 client credentials from a
/// `${env:BASALT_SECRET_...}` reference) with its files in S3: queries spanning both tiers
/// equal DuckDB over all rows, pyiceberg's RestCatalog reads the cold range as Basalt does,
/// and a restart reads the same state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_catalog_tiers_into_s3_and_pyiceberg_reads_it() {
    const TEST: &str = "rest_catalog_tiers_into_s3_and_pyiceberg_reads_it";
    let (Some(python), Some(rest), Some(_s3)) = (
        service_env("BASALT_TEST_WAREHOUSE", TEST),
        service_env("BASALT_TEST_ICEBERG_REST", TEST),
        service_env("BASALT_TEST_S3", TEST),
    ) else {
        return;
    };
    let credential = format!(
        "{}:{}",
        std::env::var("AWS_ACCESS_KEY_ID").unwrap(),
        std::env::var("AWS_SECRET_ACCESS_KEY").unwrap()
    );
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = format!(
        "[storage]\nallowed_roots = [\"file://{}\", \"s3://warehouse\"]\n\
         [tables]\ntier_interval_secs = 3600\nallowed_catalog_uris = [\"{rest}\"]\n",
        dir.path().display()
    );
    let env = [("BASALT_SECRET_ICEBERG_REST", credential.as_str())];
    let s = Server::start_with(&data, Some(&cfg), &env);
    let c = reqwest::Client::new();
    // The catalog outlives the test: a namespace of its own.
    let namespace = format!("e2e_{}_{}", std::process::id(), now_ms());
    let mut v: Value = serde_json::from_str(&spec(dir.path(), 2_000)).unwrap();
    v["warehouse"]["iceberg"] = json!({
        "catalog": {"type": "rest", "uri": rest, "warehouse": "s3://warehouse",
                    "credential": "${env:BASALT_SECRET_ICEBERG_REST}"},
        "namespace": namespace, "table": "events"
    });
    // A variable outside the secret prefix is refused before anything is called.
    let mut bad = v.clone();
    bad["warehouse"]["iceberg"]["catalog"]["credential"] = json!("${env:AWS_SECRET_ACCESS_KEY}");
    refused(&c, &s, &bad, "warehouse.iceberg.catalog.credential").await;
    create_table(&c, &s, &v.to_string()).await;
    const ROWS: u64 = 40_000;
    let file = crate::harness::gen_events_parquet(dir.path(), ROWS, 10 * DAY_MS / ROWS);
    ingest(&c, &s, &file, ROWS).await;
    let run = tier(&c, &s).await;
    assert_eq!(run["moved"], json!(true), "{run}");
    let moved = run["rows"].as_u64().unwrap();
    assert!((24_000..=30_000).contains(&moved), "{run}");
    let w = get_json(&c, &s, "/tables/events").await["warehouse"].clone();
    assert_eq!(w["rows"], json!(moved), "{w}");
    let boundary = w["boundary"].as_i64().unwrap();
    let cold = sql(
        &c,
        &s,
        &format!("SELECT count(event_id) FROM events WHERE ts < to_timestamp_millis({boundary})"),
    )
    .await;
    assert_eq!(cold["resultTable"]["rows"][0][0], json!(moved), "{cold}");
    assert!(
        cold["numWarehouseFilesQueried"].as_u64().unwrap() > 0,
        "{cold}"
    );

    let url = s.base.clone();
    let now = now_ms().to_string();
    let iceberg = format!("{namespace}.events");
    let out = Command::new(&python)
        .arg(repo_path("tests/clients/warehouse_check.py"))
        .args([
            "compare",
            "--basalt",
            &url,
            "--rest",
            &rest,
            "--warehouse",
            "s3://warehouse",
            "--iceberg",
            &iceberg,
            "--parquet",
            file.to_str().unwrap(),
            "--now-ms",
            &now,
        ])
        .env("ICEBERG_REST_CREDENTIAL", &credential)
        .output()
        .unwrap();
    let stdout = succeeded(&out);
    assert!(stdout.contains("RestCatalog reads"), "{stdout}");
    assert!(stdout.contains("warehouse checks passed"), "{stdout}");

    s.kill();
    let s = Server::start_with(&data, Some(&cfg), &env);
    assert_eq!(
        scalar(&c, &s, "SELECT count(*) FROM events").await,
        json!(ROWS)
    );
    assert_eq!(
        get_json(&c, &s, "/tables/events").await["warehouse"],
        w,
        "the same state after a restart"
    );
}
