//! The HTTP API through the real binary: create, ingest (NDJSON, CSV, Parquet, the CLI),
//! query, restart and query again; and a clear error for every kind of bad input.

use serde_json::{json, Value};

use crate::harness::{files, get_json, get_text, scalar, service_env, sql, succeeded, Server};

const SPEC: &str = include_str!("../../ingestion/src/gen_events_spec.json");

async fn post(
    c: &reqwest::Client,
    url: String,
    ct: &str,
    body: impl Into<reqwest::Body>,
) -> (u16, Value) {
    let r = c
        .post(url)
        .header("content-type", ct)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Posts a body over the server's limit: the answer is 413, or — when the server answers and
/// closes while the client is still uploading — a connection the server closed.
async fn oversized(c: &reqwest::Client, url: String, body: reqwest::Body) {
    match c
        .post(url)
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
    {
        Ok(r) => {
            let st = r.status().as_u16();
            assert_eq!(st, 413, "{}", r.text().await.unwrap_or_default());
        }
        Err(e) => assert!(
            e.is_request() || e.is_body(),
            "oversized upload failed other than by the server closing it: {e}"
        ),
    }
}

/// Ingests `body` (NDJSON of `rows` good rows) into `table` and returns its GET answer.
async fn ingest_good_rows(
    c: &reqwest::Client,
    s: &Server,
    table: &str,
    body: &str,
    rows: u64,
) -> Value {
    let url = s.url(&format!("/tables/{table}/ingest"));
    let (st, v) = post(c, url, "application/x-ndjson", body.to_string()).await;
    assert_eq!((st, v["rows"].clone()), (200, json!(rows)), "{v}");
    get_json(c, s, &format!("/tables/{table}")).await
}

fn gen(dir: &std::path::Path, rows: u64, format: &str, seed: u64) -> std::path::PathBuf {
    let out = dir.join(format!("events-{seed}.{format}"));
    let st = std::process::Command::new(env!("CARGO_BIN_EXE_basalt"))
        .args([
            "gen-events",
            "--rows",
            &rows.to_string(),
            "--format",
            format,
            "--seed",
            &seed.to_string(),
            "--out",
        ])
        .arg(&out)
        .status()
        .unwrap();
    assert!(st.success());
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_ingest_query_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let c = reqwest::Client::new();
    let s = Server::start(&data, None);

    let (st, v) = post(&c, s.url("/tables"), "application/json", SPEC).await;
    assert_eq!(st, 201, "{v}");
    let (st, _) = post(&c, s.url("/tables"), "application/json", SPEC).await;
    assert_eq!(st, 409);

    let nd = gen(dir.path(), 30_000, "ndjson", 1);
    let pq = gen(dir.path(), 50_000, "parquet", 2);
    let (st, v) = post(
        &c,
        s.url("/tables/events/ingest"),
        "application/x-ndjson",
        std::fs::read(&nd).unwrap(),
    )
    .await;
    assert_eq!((st, v.clone()), (200, json!({"rows": 30000})), "{v}");
    let (st, v) = post(
        &c,
        s.url("/tables/events/ingest"),
        "application/vnd.apache.parquet",
        std::fs::read(&pq).unwrap(),
    )
    .await;
    assert_eq!((st, v.clone()), (200, json!({"rows": 50000})), "{v}");
    let csv = "event_id,ts,user_id,event_type,country,device,latency_ms,is_bot\ncsv-1,2026-11-28T10:00:00Z,u1,purchase,FR,mobile,12.5,false\ncsv-2,1764324000000,u2,click,DE,desktop,,true\n";
    let (st, v) = post(&c, s.url("/tables/events/ingest"), "text/csv", csv).await;
    assert_eq!((st, v.clone()), (200, json!({"rows": 2})), "{v}");
    // The CLI streams a file too.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_basalt"))
        .args(["ingest", "--server", &s.base, "--table", "events"])
        .arg(gen(dir.path(), 1_000, "ndjson", 3))
        .output()
        .unwrap();
    succeeded(&out);

    let total = 30_000 + 50_000 + 2 + 1_000;
    assert_eq!(
        scalar(&c, &s, "SELECT count(*) FROM events").await,
        json!(total)
    );
    assert_eq!(
        scalar(&c, &s, "SELECT count(DISTINCT event_id) FROM events").await,
        json!(total)
    );
    let v = sql(&c, &s, "SELECT event_type, count(*) AS n FROM events WHERE country = 'AA' AND device IN ('mobile','desktop') GROUP BY event_type ORDER BY n DESC LIMIT 3").await;
    assert_eq!(
        v["resultTable"]["dataSchema"]["columnDataTypes"],
        json!(["STRING", "LONG"]),
        "{v}"
    );
    assert_eq!(v["resultTable"]["rows"].as_array().unwrap().len(), 3);
    assert!(v["numDocsScanned"].as_u64().unwrap() < total, "{v}");
    assert_eq!(v["totalDocs"], json!(total));
    let v = sql(
        &c,
        &s,
        "SELECT ts, is_bot, latency_ms FROM events WHERE event_id = 'csv-1'",
    )
    .await;
    assert_eq!(
        v["resultTable"]["rows"],
        json!([["2026-11-28 10:00:00.0", false, 12.5]]),
        "{v}"
    );
    assert_eq!(
        v["resultTable"]["dataSchema"]["columnDataTypes"],
        json!(["TIMESTAMP", "BOOLEAN", "DOUBLE"])
    );
    let p95 = scalar(
        &c,
        &s,
        "SELECT PERCENTILETDIGEST(latency_ms, 95) FROM events",
    )
    .await;
    assert!(p95.as_f64().unwrap() > 50.0, "{p95}");
    // A KPI tile: Basalt's own plan answers it, with DataFusion's answer.
    let kpi = "SELECT count(*) AS n, max(latency_ms), min(ts) FROM events \
               WHERE country = 'AA' AND ts >= '2020-01-01T00:00:00Z'";
    let ask = |options: &str| {
        c.post(s.url("/query/sql"))
            .json(&json!({"sql": kpi, "queryOptions": options}))
            .send()
    };
    let direct: Value = ask("useResultCache=false")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let planned: Value = ask("useResultCache=false;useDirectPlan=false")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(direct["directPlan"], json!(true), "{direct}");
    assert_eq!(planned["directPlan"], json!(false), "{planned}");
    assert_eq!(direct["resultTable"], planned["resultTable"]);
    assert!(
        direct["resultTable"]["rows"][0][0].as_u64().unwrap() > 0,
        "{direct}"
    );
    let hll = scalar(&c, &s, "SELECT DISTINCTCOUNTHLL(user_id) FROM events")
        .await
        .as_u64()
        .unwrap();
    let exact = scalar(&c, &s, "SELECT count(DISTINCT user_id) FROM events")
        .await
        .as_u64()
        .unwrap();
    assert!(
        (hll as f64 - exact as f64).abs() / (exact as f64) < 0.05,
        "{hll} vs {exact}"
    );
    let v = sql(
        &c,
        &s,
        "SELECT DATETRUNC('MINUTE', ts) AS m, count(*) FROM events GROUP BY 1 ORDER BY 1 LIMIT 2",
    )
    .await;
    assert_eq!(v["exceptions"], json!([]), "{v}");

    let t: Value = c
        .get(s.url("/tables/events"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(t["stats"]["rows"], json!(total));
    assert_eq!(t["stats"]["segments"], json!(4));
    let tables: Value = c
        .get(s.url("/tables"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(tables, json!({"tables": ["events"], "unavailable": []}));
    let metrics = get_text(&c, &s, "/metrics").await;
    assert!(
        metrics.contains("basalt_ingested_rows_total{table=\"events\"} 81002"),
        "{metrics}"
    );
    assert!(metrics.contains("basalt_queries_total"), "{metrics}");

    // Restart on the same data dir: everything is still there.
    s.kill();
    let s = Server::start(&data, None);
    assert_eq!(
        scalar(&c, &s, "SELECT count(*) FROM events").await,
        json!(total)
    );
    assert_eq!(
        scalar(
            &c,
            &s,
            "SELECT count(*) FROM events WHERE event_id = 'csv-2'"
        )
        .await,
        json!(1)
    );

    let r = c.delete(s.url("/tables/events")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = c.get(s.url("/tables/events")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors_and_nothing_partial() {
    let dir = tempfile::tempdir().unwrap();
    let c = reqwest::Client::new();
    let s = Server::start(
        &dir.path().join("data"),
        Some("[ingest]\nmax_body_bytes = 100000\n[query]\ntimeout_ms = 5000\n"),
    );

    // Table specs.
    let (st, v) = post(&c, s.url("/tables"), "application/json", "{not json").await;
    assert_eq!(st, 400, "{v}");
    let (st, v) = post(
        &c,
        s.url("/tables"),
        "application/json",
        SPEC.replace(
            "\"DOUBLE\",\"index\":[\"range\"]",
            "\"DUBBLE\",\"index\":[\"range\"]",
        ),
    )
    .await;
    assert_eq!(st, 400);
    assert!(
        v["error"].as_str().unwrap().contains("columns[11].type"),
        "{v}"
    );
    let (st, v) = post(
        &c,
        s.url("/tables"),
        "application/json",
        SPEC.replace("\"segment\"", "\"segmnt\""),
    )
    .await;
    assert_eq!(st, 400);
    assert!(v["error"].as_str().unwrap().contains("segmnt"), "{v}");
    let (st, v) = post(
        &c,
        s.url("/tables"),
        "application/json",
        SPEC.replace("\"time_column\":\"ts\"", "\"time_column\":\"url\""),
    )
    .await;
    assert_eq!(st, 400);
    assert!(v["error"].as_str().unwrap().contains("time_column"), "{v}");
    let (st, _) = post(&c, s.url("/tables"), "application/json", SPEC).await;
    assert_eq!(st, 201);

    // Rows: a bad row rejects the whole request and nothing becomes visible.
    let good = "{\"event_id\":\"a\",\"ts\":1764324000000}\n";
    let body = format!("{good}{good}{{\"event_id\":\"b\",\"ts\":\"not a time\"}}\n");
    let (st, v) = post(
        &c,
        s.url("/tables/events/ingest"),
        "application/x-ndjson",
        body,
    )
    .await;
    assert_eq!(st, 400, "{v}");
    let msg = v["error"].as_str().unwrap();
    assert!(msg.contains("line 3") && msg.contains("\"ts\""), "{msg}");
    let (st, v) = post(
        &c,
        s.url("/tables/events/ingest"),
        "application/x-ndjson",
        format!("{good}{{\"event_id\":1"),
    )
    .await;
    assert_eq!(st, 400);
    assert!(v["error"].as_str().unwrap().contains("line 2"), "{v}");
    let (st, v) = post(
        &c,
        s.url("/tables/events/ingest"),
        "text/csv",
        "event_id,ts,latency_ms\nx,1764324000000,fast\n",
    )
    .await;
    assert_eq!(st, 400);
    assert!(v["error"].as_str().unwrap().contains("latency_ms"), "{v}");
    let (st, v) = post(
        &c,
        s.url("/tables/events/ingest"),
        "application/vnd.apache.parquet",
        "PAR1 nope",
    )
    .await;
    assert_eq!(st, 400, "{v}");
    // An empty Parquet body (spooled, then nothing to map) is a bad request too.
    let (st, v) = post(
        &c,
        s.url("/tables/events/ingest"),
        "application/vnd.apache.parquet",
        "",
    )
    .await;
    assert_eq!(st, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("Parquet"), "{v}");
    // A Parquet file of a few kilobytes whose one value decodes to 40 MiB: its page declares
    // more than a page may hold and is refused before it is decompressed, naming the column.
    let huge = {
        use arrow::datatypes::{DataType, Field, Schema};
        use std::sync::Arc;
        let schema = Arc::new(Schema::new(vec![
            Field::new("ts", DataType::Int64, false),
            Field::new("event_id", DataType::Utf8, false),
        ]));
        let batch = arrow::record_batch::RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(arrow::array::Int64Array::from(vec![1_764_324_000_000i64])),
                Arc::new(arrow::array::StringArray::from(vec!["a".repeat(40 << 20)])),
            ],
        )
        .unwrap();
        let props = parquet::file::properties::WriterProperties::builder()
            .set_compression(parquet::basic::Compression::ZSTD(Default::default()))
            .build();
        let mut out = Vec::new();
        let mut w = parquet::arrow::ArrowWriter::try_new(&mut out, schema, Some(props)).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        out
    };
    assert!(huge.len() < 64 << 10, "{} bytes", huge.len());
    let (st, v) = post(
        &c,
        s.url("/tables/events/ingest"),
        "application/vnd.apache.parquet",
        huge,
    )
    .await;
    assert_eq!(st, 400, "{v}");
    let e = v["error"].as_str().unwrap();
    assert!(
        e.contains("\"event_id\"") && e.contains("a page declares"),
        "{v}"
    );
    let (st, _) = post(&c, s.url("/tables/events/ingest"), "application/xml", good).await;
    assert_eq!(st, 415);
    let (st, v) = post(
        &c,
        s.url("/tables/nope/ingest"),
        "application/x-ndjson",
        good,
    )
    .await;
    assert_eq!(st, 404, "{v}");
    // Oversized: declared length and a streamed body without a length.
    let big = good.repeat(100_000 / good.len() + 10);
    oversized(&c, s.url("/tables/events/ingest"), big.clone().into()).await;
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = big
        .as_bytes()
        .chunks(4096)
        .map(|c| Ok(c.to_vec()))
        .collect();
    oversized(
        &c,
        s.url("/tables/events/ingest"),
        reqwest::Body::wrap_stream(futures::stream::iter(chunks)),
    )
    .await;
    assert_eq!(
        scalar(&c, &s, "SELECT count(*) FROM events").await,
        json!(0)
    );
    let (st, _) = post(
        &c,
        s.url("/tables/events/ingest"),
        "application/x-ndjson",
        good,
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(
        scalar(&c, &s, "SELECT count(*) FROM events").await,
        json!(1)
    );

    // A bad row after several sealed segments: those segments are staged in the deep store
    // but never published, and are deleted.
    let small = SPEC
        .replace("\"name\":\"events\"", "\"name\":\"small\"")
        .replace("\"max_rows\":1000000", "\"max_rows\":10");
    let (st, v) = post(&c, s.url("/tables"), "application/json", small).await;
    assert_eq!(st, 201, "{v}");
    let body = format!("{}{{\"event_id\":\"z\",\"ts\":true}}\n", good.repeat(35));
    let (st, v) = post(
        &c,
        s.url("/tables/small/ingest"),
        "application/x-ndjson",
        body,
    )
    .await;
    assert_eq!(st, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("line 36"), "{v}");
    assert_eq!(scalar(&c, &s, "SELECT count(*) FROM small").await, json!(0));
    // The table's objects live in its generation's folder: no file may be left there.
    let left = files(&dir.path().join("data/deepstore/segments/small"));
    assert!(
        left.is_empty(),
        "staged segments were not removed: {left:?}"
    );
    let stats = ingest_good_rows(&c, &s, "small", &good.repeat(35), 35).await;
    assert_eq!(stats["stats"]["segments"], json!(4), "{stats}");

    // segment.max_bytes seals by size: 200 rows in segments of at most ~4 KiB of rows.
    let sized = SPEC
        .replace("\"name\":\"events\"", "\"name\":\"sized\"")
        .replace(
            "\"max_rows\":1000000",
            "\"max_rows\":1000000,\"max_bytes\":\"4KB\"",
        );
    let (st, v) = post(&c, s.url("/tables"), "application/json", sized).await;
    assert_eq!(st, 201, "{v}");
    let stats = ingest_good_rows(&c, &s, "sized", &good.repeat(200), 200).await;
    let segments = stats["stats"]["segments"].as_u64().unwrap();
    assert!(segments > 1 && segments < 200, "{stats}");
    // Real-time sources: a bad librdkafka property or an ambiguous source is refused with a
    // message naming it, before anything is created.
    for (source, says) in [
        (
            r#"{"kafka":{"brokers":"127.0.0.1:9092","topic":"e","properties":{"session.timeout.ms":"soon"}}}"#,
            "session.timeout.ms",
        ),
        (
            r#"{"kafka":{"brokers":"127.0.0.1:9092","topic":"e"},"generator":{}}"#,
            "exactly one",
        ),
        (
            r#"{"generator":{"partitions":0}}"#,
            "source.generator.partitions",
        ),
    ] {
        let rt = SPEC
            .replace("\"name\":\"events\"", "\"name\":\"rt\"")
            .replace("\"segment\"", &format!("\"source\":{source},\"segment\""));
        let (st, v) = post(&c, s.url("/tables"), "application/json", rt).await;
        assert_eq!(st, 400, "{v}");
        assert!(v["error"].as_str().unwrap().contains(says), "{says}: {v}");
    }
    let r = c.get(s.url("/tables/rt")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 404, "nothing was created");
    // A table without a source has no ingestion status.
    let r = c
        .get(s.url("/tables/events/ingestion"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);

    // SQL: errors come back in "exceptions" without a resultTable.
    for (q, code) in [
        ("SELEC 1", 150),
        ("SELECT nope FROM events", 150),
        ("SELECT * FROM missing", 190),
        ("DELETE FROM events", 150),
    ] {
        let v = sql(&c, &s, q).await;
        assert_eq!(v["exceptions"][0]["errorCode"], json!(code), "{q}: {v}");
        assert!(v.get("resultTable").is_none(), "{v}");
    }
    let r = c
        .post(s.url("/query/sql"))
        .header("content-type", "application/json")
        .body("{\"query\":1}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let v: Value = c
        .post(s.url("/query/sql"))
        .json(&json!({"sql": "SELECT count(DISTINCT v) FROM generate_series(1, 100000000) AS g(v)", "queryOptions": "timeoutMs=50"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["exceptions"][0]["errorCode"], json!(250), "{v}");
    // Still healthy after all of that.
    let h: Value = c
        .get(s.url("/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(h["status"], json!("ok"));
}

/// The README's main command: loads `events`, answers queries, and streams `live_events`
/// through the real-time path (generator source) with rows visible as they arrive.
#[test]
fn quickstart_shows_batch_and_real_time() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_basalt"))
        .args([
            "quickstart",
            "--rows",
            "5000",
            "--exit",
            "--http-addr",
            "127.0.0.1:0",
            "--pg-addr",
            "127.0.0.1:0",
        ])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = succeeded(&out);
    assert!(stdout.contains("[5000]"), "batch count: {stdout}");
    // Where to go next: the console and a psql command line for the PostgreSQL port.
    assert!(
        stdout.contains("web console:  http://127.0.0.1:"),
        "{stdout}"
    );
    assert!(stdout.contains("psql -h 127.0.0.1 -p "), "{stdout}");
    let live: Vec<u64> = stdout
        .lines()
        .filter(|l| l.contains("FROM live_events:"))
        .map(|l| {
            let rows: serde_json::Value =
                serde_json::from_str(l.rsplit(": ").next().unwrap()).unwrap();
            rows[0][0].as_u64().unwrap()
        })
        .collect();
    assert_eq!(live.len(), 3, "{stdout}");
    assert!(
        live[0] > 0 && live[0] < live[1] && live[1] < live[2],
        "live counts grow: {live:?}"
    );
    assert!(stdout.contains("live_events$quarantine"), "{stdout}");
}

/// Multi-value columns (STRING_ARRAY, LONG_ARRAY) through the real binary: arrays from
/// NDJSON (a single value is a one-element array), CSV (JSON array text), a bad array
/// rejected by name, `array_has*` filters, Pinot's array column types and JSON array cells,
/// and the same answers after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn array_columns_ingest_filter_and_answer_as_pinot_does() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let c = reqwest::Client::new();
    let s = Server::start(&data, None);
    let spec = json!({"name":"items","time_column":"ts","columns":[
        {"name":"id","type":"STRING"},{"name":"ts","type":"TIMESTAMP"},
        {"name":"tags","type":"STRING_ARRAY","index":["inverted"]},
        {"name":"codes","type":"LONG_ARRAY"}]});
    let bad_spec = spec.to_string().replace("[\"inverted\"]", "[\"range\"]");
    let (st, v) = post(&c, s.url("/tables"), "application/json", bad_spec).await;
    assert_eq!(st, 400, "{v}");
    assert!(v.to_string().contains("array column"), "{v}");
    let (st, v) = post(&c, s.url("/tables"), "application/json", spec.to_string()).await;
    assert_eq!(st, 201, "{v}");
    let nd = [
        r#"{"id":"a","ts":1000,"tags":["red","sale"],"codes":[1,2,3]}"#,
        r#"{"id":"b","ts":2000,"tags":"red","codes":[]}"#,
        r#"{"id":"c","ts":3000,"tags":[],"codes":null}"#,
        r#"{"id":"d","ts":4000,"codes":[7]}"#,
    ]
    .join("\n");
    let (st, v) = post(
        &c,
        s.url("/tables/items/ingest"),
        "application/x-ndjson",
        nd,
    )
    .await;
    assert_eq!((st, v.clone()), (200, json!({"rows": 4})), "{v}");
    let csv = "id,ts,tags,codes\ne,5000,\"[\"\"blue\"\",\"\"red\"\"]\",[9]\nf,6000,green,\n";
    let (st, v) = post(&c, s.url("/tables/items/ingest"), "text/csv", csv).await;
    assert_eq!((st, v.clone()), (200, json!({"rows": 2})), "{v}");
    let bad = r#"{"id":"x","ts":1,"tags":["ok",null]}"#;
    let (st, v) = post(
        &c,
        s.url("/tables/items/ingest"),
        "application/x-ndjson",
        bad,
    )
    .await;
    assert_eq!(st, 400, "{v}");
    assert!(
        v.to_string().contains("tags") && v.to_string().contains("null"),
        "{v}"
    );

    check_arrays(&c, &s).await;
    drop(s);
    // After a restart the rows come from the sealed segment on disk.
    let s = Server::start(&data, None);
    check_arrays(&c, &s).await;
    let v = sql(
        &c,
        &s,
        "SELECT id, tags FROM items WHERE array_has(tags, 'green')",
    )
    .await;
    assert_eq!(v["resultTable"]["rows"], json!([["f", ["green"]]]), "{v}");
    assert_eq!(scalar(&c, &s, "SELECT count(*) FROM items").await, json!(6));
}

async fn check_arrays(c: &reqwest::Client, s: &Server) {
    let q = |f: &str| format!("SELECT id FROM items WHERE {f} ORDER BY id");
    let ids = |v: Value| -> Vec<String> {
        v["resultTable"]["rows"]
            .as_array()
            .unwrap_or_else(|| panic!("{v}"))
            .iter()
            .map(|r| r[0].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        ids(sql(c, s, &q("array_has(tags, 'red')")).await),
        ["a", "b", "e"]
    );
    assert_eq!(
        ids(sql(c, s, &q("NOT array_has(tags, 'red')")).await),
        ["c", "f"]
    );
    assert_eq!(
        ids(sql(c, s, &q("array_has_any(codes, make_array(3, 9))")).await),
        ["a", "e"]
    );
    assert_eq!(
        ids(sql(c, s, &q("array_has_all(tags, make_array('red', 'sale'))")).await),
        ["a"]
    );
    let v = sql(c, s, "SELECT tags, codes FROM items WHERE id = 'a'").await;
    assert_eq!(
        v["resultTable"]["dataSchema"]["columnDataTypes"],
        json!(["STRING_ARRAY", "LONG_ARRAY"]),
        "{v}"
    );
    assert_eq!(
        v["resultTable"]["rows"],
        json!([[["red", "sale"], [1, 2, 3]]]),
        "{v}"
    );
}

/// The HTTP API's OpenAPI document is served and holds under schemathesis: generated requests
/// to every operation (bounded examples, a fixed seed) get no 5xx, only documented status codes
/// and content types, and bodies that match their schemas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_contract_holds_under_schemathesis() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), None);
    let c = reqwest::Client::new();
    let doc = get_json(&c, &s, "/openapi.json").await;
    assert_eq!(doc["openapi"], json!("3.1.0"), "{doc}");
    let mut paths: Vec<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            "/",
            "/console/{file}",
            "/health",
            "/metrics",
            "/openapi.json",
            "/query",
            "/query/sql",
            "/semantic/models",
            "/semantic/models/{name}",
            "/semantic/query",
            "/tables",
            "/tables/{name}",
            "/tables/{name}/ingest",
            "/tables/{name}/ingestion",
            "/tables/{name}/schema",
            "/tables/{name}/tier",
        ]
    );
    let Some(schemathesis) = service_env(
        "BASALT_TEST_SCHEMATHESIS",
        "openapi_contract_holds_under_schemathesis",
    ) else {
        return;
    };
    crate::harness::create_table(&c, &s, basalt_ingest::gen::EVENTS_SPEC).await;
    let out = std::process::Command::new(schemathesis)
        .arg("run")
        .arg(s.url("/openapi.json"))
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            "--max-examples",
            "100",
            "--seed",
            "17",
            "--workers",
            "1",
            "--request-timeout",
            "30",
            "--suppress-health-check",
            "all",
        ])
        .env("SCHEMATHESIS_HOOKS", "")
        .output()
        .unwrap();
    succeeded(&out);
    // The server lived through it.
    assert_eq!(c.get(s.url("/health")).send().await.unwrap().status(), 200);
}

/// Rows of a Pinot answer, sorted (as text, floats to 6 decimals: sums of doubles added in
/// another order differ in their last bits), for comparing answers of one query.
fn sorted_rows(v: &Value) -> Vec<String> {
    let cell = |c: &Value| match c.as_f64() {
        Some(f) if c.is_f64() => format!("{f:.6}"),
        _ => c.to_string(),
    };
    let mut rows: Vec<String> = v["resultTable"]["rows"]
        .as_array()
        .unwrap_or_else(|| panic!("{v}"))
        .iter()
        .map(|r| {
            let cells: Vec<String> = r.as_array().unwrap().iter().map(cell).collect();
            cells.join("|")
        })
        .collect();
    rows.sort();
    rows
}

/// A table declaring a star-tree: its sealed segments answer the dashboard GROUP BYs it
/// covers from the tree (`numSegmentsStarTree`, EXPLAIN), with the rows' answers
/// (`useStarTree=false`), over HTTP and PostgreSQL, before and after a restart; a spec
/// naming what cannot be a star-tree is refused naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn star_tree_answers_what_it_covers_like_the_rows() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let c = reqwest::Client::new();
    let s = Server::start(&data, None);
    let mut spec: Value = serde_json::from_str(SPEC).unwrap();
    spec["segment"]["max_rows"] = json!(20_000);
    for (tree, why) in [
        (
            json!({"dimensions": ["nope"], "metrics": ["count(*)"]}),
            "nope",
        ),
        (
            json!({"dimensions": ["country"], "metrics": ["sum(country)"]}),
            "sum(country)",
        ),
        (
            json!({"dimensions": ["country"], "metrics": ["avg(revenue)"]}),
            "avg(revenue)",
        ),
        (
            json!({"dimensions": ["country"], "metrics": [], "max_leaf_records": 0}),
            "max_leaf_records",
        ),
        (
            json!({"dimensions": ["country"], "metrics": [], "extra": 1}),
            "extra",
        ),
    ] {
        let mut bad = spec.clone();
        bad["star_tree"] = json!([tree]);
        let (st, v) = post(&c, s.url("/tables"), "application/json", bad.to_string()).await;
        assert_eq!(st, 400, "{v}");
        assert!(v.to_string().contains(why), "{why}: {v}");
    }
    spec["star_tree"] = json!([{
        "dimensions": ["country", "device", "event_type"],
        "metrics": ["count(*)", "sum(revenue)", "approx_distinct(user_id)", "max(latency_ms)"],
        "max_leaf_records": 100
    }]);
    let (st, v) = post(&c, s.url("/tables"), "application/json", spec.to_string()).await;
    assert_eq!(st, 201, "{v}");
    let pq = gen(dir.path(), 60_000, "parquet", 3);
    let (st, v) = post(
        &c,
        s.url("/tables/events/ingest"),
        "application/vnd.apache.parquet",
        std::fs::read(&pq).unwrap(),
    )
    .await;
    assert_eq!((st, v.clone()), (200, json!({"rows": 60000})), "{v}");
    let queries = [
        "SELECT country, count(*), sum(revenue), max(latency_ms) FROM events \
         GROUP BY country ORDER BY country",
        "SELECT device, event_type, count(*) FROM events WHERE country IN ('US', 'FR') \
         GROUP BY device, event_type ORDER BY device, event_type",
        "SELECT country, approx_distinct(user_id) FROM events WHERE device <> 'tablet' \
         GROUP BY country ORDER BY country",
        "SELECT event_type, avg(revenue) FROM events WHERE country = 'DE' \
         GROUP BY event_type ORDER BY event_type",
    ];
    let with = |q: &str, options: &str| {
        c.post(s.url("/query/sql"))
            .json(&json!({"sql": q, "queryOptions": options}))
            .send()
    };
    let mut answers = Vec::new();
    for q in queries {
        let tree: Value = with(q, "useResultCache=false")
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(tree["exceptions"], json!([]), "{q}: {tree}");
        assert_eq!(tree["numSegmentsStarTree"], json!(3), "{q}: {tree}");
        assert!(
            tree["numDocsScanned"].as_u64().unwrap() < 20_000,
            "{q}: {tree}"
        );
        let rows: Value = with(q, "useResultCache=false;useStarTree=false")
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(rows["numSegmentsStarTree"], json!(0), "{q}: {rows}");
        assert_eq!(sorted_rows(&tree), sorted_rows(&rows), "{q}");
        answers.push(sorted_rows(&tree));
    }
    let plan = sql(&c, &s, &format!("EXPLAIN {}", queries[0])).await;
    assert!(
        plan.to_string().contains("star_tree=3/3 segments"),
        "{plan}"
    );
    // The same over PostgreSQL.
    let pg = crate::harness::pg_connect(&s).await;
    let mut got: Vec<String> = pg
        .query(queries[1], &[])
        .await
        .unwrap()
        .iter()
        .map(|r| {
            let (a, b, n) = (
                r.get::<_, String>(0),
                r.get::<_, String>(1),
                r.get::<_, i64>(2),
            );
            format!("{}|{}|{n}", json!(a), json!(b))
        })
        .collect();
    got.sort();
    assert_eq!(got, answers[1]);
    drop(s);
    // After a restart the trees are read from the segments on disk.
    let s = Server::start(&data, None);
    for (q, want) in queries.iter().zip(&answers) {
        let v = sql(&c, &s, q).await;
        assert_eq!(v["numSegmentsStarTree"], json!(3), "{q}: {v}");
        assert_eq!(&sorted_rows(&v), want, "{q}");
    }
}

/// Row `i` of the text-search table: a log line and a user agent.
fn log_row(i: u64) -> (String, Option<String>, &'static str) {
    let level = ["INFO", "WARN", "ERROR"][(i % 3) as usize];
    let message = (!i.is_multiple_of(13)).then(|| {
        format!(
            "{} {} user-{} {}",
            ["GET", "POST"][(i % 2) as usize],
            ["/api/orders", "/login", "/static/app.js", "/api/users/42"][(i % 4) as usize],
            i % 50,
            match i % 5 {
                0 => "disk full, retrying",
                1 => "Timeout after 30s",
                _ => "ok",
            }
        )
    });
    let agent = [
        "Mozilla/5.0 (Windows NT 10.0) Chrome/120.0",
        "Mozilla/5.0 (Linux; Android 14) Chrome/119.0 Mobile",
        "curl/8.4.0",
    ][(i % 3) as usize];
    (level.to_string(), message, agent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_match_through_http_and_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let c = reqwest::Client::new();
    let s = Server::start(&data, None);
    let spec = |message_type: &str| {
        json!({
            "name": "logs",
            "time_column": "ts",
            "columns": [
                {"name": "ts", "type": "TIMESTAMP"},
                {"name": "level", "type": "STRING", "index": ["inverted"]},
                {"name": "message", "type": message_type, "index": ["text"]},
                {"name": "agent", "type": "STRING", "index": ["text", "inverted"]}
            ],
            "segment": {"max_rows": 1000}
        })
    };
    create_after_refusal(
        &c,
        &s,
        &spec("LONG"),
        "a text index needs a STRING column",
        &spec("STRING"),
    )
    .await;
    let rows = 3_000u64;
    let mut body = String::new();
    for i in 0..rows {
        let (level, message, agent) = log_row(i);
        body.push_str(
            &json!({"ts": 1_795_860_000_000i64 + i as i64 * 1000, "level": level,
                    "message": message, "agent": agent})
            .to_string(),
        );
        body.push('\n');
    }
    let (st, v) = post(
        &c,
        s.url("/tables/logs/ingest"),
        "application/x-ndjson",
        body,
    )
    .await;
    assert_eq!((st, v.clone()), (200, json!({"rows": 3000})), "{v}");
    let want = |f: &dyn Fn(u64) -> bool| (0..rows).filter(|&i| i % 13 != 0 && f(i)).count() as u64;
    let cases: Vec<(&str, u64)> = vec![
        ("TEXT_MATCH(message, 'timeout')", want(&|i| i % 5 == 1)),
        (
            "TEXT_MATCH(message, '\"disk full\"')",
            want(&|i| i % 5 == 0),
        ),
        ("TEXT_MATCH(message, 'ord*')", want(&|i| i % 4 == 0)),
        (
            "TEXT_MATCH(message, 'post AND NOT (login OR timeout)')",
            want(&|i| i % 2 == 1 && i % 4 != 1 && i % 5 != 1),
        ),
        (
            "TEXT_MATCH(message, '\"api use\"*') AND level = 'ERROR'",
            want(&|i| i % 4 == 3 && i % 3 == 2),
        ),
        ("NOT TEXT_MATCH(message, 'ok')", want(&|i| i % 5 < 2)),
        (
            "TEXT_MATCH(agent, 'android')",
            (0..rows).filter(|i| i % 3 == 1).count() as u64,
        ),
        ("TEXT_MATCH(message, 'nothinglikethis')", 0),
    ];
    let pg = crate::harness::pg_connect(&s).await;
    counts_over_http_and_postgres(&c, &s, &pg, "logs", &cases).await;
    // A word no segment holds prunes them all from the text indexes' term dictionaries.
    let v = sql(
        &c,
        &s,
        "SELECT count(*) FROM logs WHERE TEXT_MATCH(message, 'nothinglikethis')",
    )
    .await;
    assert_eq!(v["numSegmentsMatched"], json!(0), "{v}");
    // A bad query is a 400 naming the problem, and a PostgreSQL error with a SQLSTATE.
    let bad = "SELECT count(*) FROM logs WHERE TEXT_MATCH(message, 'title:x')";
    refused_over_http_and_postgres(&c, &s, &pg, bad, "field names").await;
    drop(pg);
    drop(s);
    // After a restart the indexes are read from the segments on disk.
    let s = Server::start(&data, None);
    for (cond, n) in &cases {
        let q = format!("SELECT count(*) FROM logs WHERE {cond}");
        assert_eq!(scalar(&c, &s, &q).await, json!(n), "{q}");
    }
}

/// The spec `bad` is refused with a 400 naming `why`; then `good` creates its table.
async fn create_after_refusal(
    c: &reqwest::Client,
    s: &Server,
    bad: &Value,
    why: &str,
    good: &Value,
) {
    let (st, v) = post(c, s.url("/tables"), "application/json", bad.to_string()).await;
    assert_eq!(st, 400, "{v}");
    assert!(v.to_string().contains(why), "{v}");
    let (st, v) = post(c, s.url("/tables"), "application/json", good.to_string()).await;
    assert_eq!(st, 201, "{v}");
}

/// `SELECT count(*) FROM table WHERE cond` gives `n` over HTTP and over PostgreSQL.
async fn counts_over_http_and_postgres(
    c: &reqwest::Client,
    s: &Server,
    pg: &tokio_postgres::Client,
    table: &str,
    cases: &[(&str, u64)],
) {
    for (cond, n) in cases {
        let q = format!("SELECT count(*) FROM {table} WHERE {cond}");
        let v = sql(c, s, &q).await;
        assert_eq!(v["exceptions"], json!([]), "{q}: {v}");
        assert_eq!(v["resultTable"]["rows"][0][0], json!(n), "{q}: {v}");
        let got: i64 = pg.query_one(&q, &[]).await.unwrap().get(0);
        assert_eq!(got as u64, *n, "PostgreSQL: {q}");
    }
}

/// `bad` is refused over HTTP (a 4xx, or an exception) and over PostgreSQL (an error whose
/// SQLSTATE is not XX000), both naming `why`.
async fn refused_over_http_and_postgres(
    c: &reqwest::Client,
    s: &Server,
    pg: &tokio_postgres::Client,
    bad: &str,
    why: &str,
) {
    let r = c
        .post(s.url("/query/sql"))
        .json(&json!({"sql": bad}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap();
    assert!(
        (400..500).contains(&status) || v["exceptions"].to_string().contains(why),
        "{status}: {v}"
    );
    assert!(v.to_string().contains(why), "{bad}: {v}");
    let e = pg.query(bad, &[]).await.unwrap_err();
    let db = e.as_db_error().unwrap_or_else(|| panic!("{e}"));
    assert!(db.message().contains(why), "{bad}: {db:?}");
    assert_ne!(db.code().code(), "XX000", "{db:?}");
}

/// Event `i`'s attributes: a browser object, tags, and a user object on even events.
fn attrs_row(i: u64) -> Value {
    let browser = ["firefox", "chrome", "safari"][(i % 3) as usize];
    let tags: Vec<String> = (0..i % 4).map(|t| format!("t{t}")).collect();
    let mut doc = json!({"browser": {"name": browser, "version": i % 7}, "tags": tags});
    if i.is_multiple_of(2) {
        doc["user"] = json!({"id": format!("u{i}"), "premium": i.is_multiple_of(4)});
    }
    doc
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_match_through_http_and_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let c = reqwest::Client::new();
    let s = Server::start(&data, None);
    let spec = |attrs_type: &str| {
        json!({
            "name": "events",
            "time_column": "ts",
            "columns": [
                {"name": "ts", "type": "TIMESTAMP"},
                {"name": "kind", "type": "STRING"},
                {"name": "attrs", "type": attrs_type, "index": ["json"]}
            ],
            "segment": {"max_rows": 1000}
        })
    };
    create_after_refusal(
        &c,
        &s,
        &spec("STRING"),
        "a json index needs a JSON column",
        &spec("JSON"),
    )
    .await;
    // Objects as they are, or (every 5th) as a string holding JSON; every 11th has none.
    let rows = 3_000u64;
    let mut body = String::new();
    for i in 0..rows {
        let attrs = match i {
            _ if i % 11 == 0 => Value::Null,
            _ if i % 5 == 0 => Value::String(attrs_row(i).to_string()),
            _ => attrs_row(i),
        };
        let kind = ["click", "view"][(i % 2) as usize];
        let row =
            json!({"ts": 1_795_860_000_000i64 + i as i64 * 1000, "kind": kind, "attrs": attrs});
        body.push_str(&row.to_string());
        body.push('\n');
    }
    let (st, v) = post(
        &c,
        s.url("/tables/events/ingest"),
        "application/x-ndjson",
        body,
    )
    .await;
    assert_eq!((st, v.clone()), (200, json!({"rows": 3000})), "{v}");
    let want = |f: &dyn Fn(u64) -> bool| (0..rows).filter(|&i| i % 11 != 0 && f(i)).count() as u64;
    let cases: Vec<(&str, u64)> = vec![
        (
            r#"JSON_MATCH(attrs, '"$.browser.name" = ''chrome''')"#,
            want(&|i| i % 3 == 1),
        ),
        (
            r#"JSON_MATCH(attrs, '"$.browser.version" >= 5')"#,
            want(&|i| i % 7 >= 5),
        ),
        (
            r#"JSON_MATCH(attrs, '"$.tags[*]" = ''t2''')"#,
            want(&|i| i % 4 == 3),
        ),
        (
            r#"JSON_MATCH(attrs, '"$.user.premium" = true')"#,
            want(&|i| i % 4 == 0),
        ),
        (
            r#"JSON_MATCH(attrs, '"$.user" IS NULL AND "$.tags[0]" IS NOT NULL') AND kind = 'view'"#,
            want(&|i| i % 2 == 1 && i % 4 != 0),
        ),
        (
            r#"NOT JSON_MATCH(attrs, '"$.browser.name" IN (''chrome'', ''safari'')')"#,
            want(&|i| i % 3 == 0),
        ),
        (
            "JSON_EXTRACT_SCALAR(attrs, '$.browser.name', 'STRING') = 'safari'",
            want(&|i| i % 3 == 2),
        ),
        (
            "JSON_EXTRACT_SCALAR(attrs, '$.browser.version', 'LONG') = 3",
            want(&|i| i % 7 == 3),
        ),
        (r#"JSON_MATCH(attrs, '"$.browser.name" = ''opera''')"#, 0),
    ];
    let pg = crate::harness::pg_connect(&s).await;
    counts_over_http_and_postgres(&c, &s, &pg, "events", &cases).await;
    // Extraction in GROUP BY, over both protocols; NULL values give the default.
    let q = "SELECT JSON_EXTRACT_SCALAR(attrs, '$.browser.name', 'STRING', 'none') AS b, count(*) AS n FROM events GROUP BY 1 ORDER BY 1";
    let per = |b: u64| want(&|i| i % 3 == b) as i64;
    let none = (0..rows).filter(|i| i % 11 == 0).count() as i64;
    let expected = json!([
        ["chrome", per(1)],
        ["firefox", per(0)],
        ["none", none],
        ["safari", per(2)]
    ]);
    let v = sql(&c, &s, q).await;
    assert_eq!(v["resultTable"]["rows"], expected, "{v}");
    let got: Vec<Value> = pg
        .query(q, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| json!([r.get::<_, String>(0), r.get::<_, i64>(1)]))
        .collect();
    assert_eq!(json!(got), expected);
    // A key no segment holds prunes them all through the JSON indexes.
    let v = sql(
        &c,
        &s,
        &format!("SELECT count(*) FROM events WHERE {}", cases[8].0),
    )
    .await;
    assert_eq!(v["numSegmentsMatched"], json!(0), "{v}");
    for (bad, why) in [
        (
            r#"SELECT count(*) FROM events WHERE JSON_MATCH(attrs, '"$.a" = NULL')"#,
            "IS NULL",
        ),
        (
            "SELECT JSON_EXTRACT_SCALAR(attrs, '$.tags[*]', 'STRING') FROM events",
            "[*]",
        ),
    ] {
        refused_over_http_and_postgres(&c, &s, &pg, bad, why).await;
    }
    drop(pg);
    drop(s);
    // After a restart the indexes are read from the segments on disk.
    let s = Server::start(&data, None);
    for (cond, n) in &cases {
        let q = format!("SELECT count(*) FROM events WHERE {cond}");
        assert_eq!(scalar(&c, &s, &q).await, json!(n), "{q}");
    }
}
