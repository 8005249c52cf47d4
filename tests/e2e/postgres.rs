//! The PostgreSQL wire protocol through the real binary: psql, psycopg 3, psycopg2,
//! SQLAlchemy and Grafana's macro-expanded SQL (`tests/clients/pg_clients.py`); the client
//! matrix of README (asyncpg, SQLAlchemy over three drivers, pandas, pgcli, harlequin and
//! pinotdb in `pg_drivers.py`, pgjdbc in `PgJdbc.java`, Apache Superset in
//! `superset_check.py`); then password authentication on both PostgreSQL and HTTP with
//! tokens from the config.

use std::process::Command;

use serde_json::json;

use crate::harness::{create_table, repo_path, service_env, succeeded, Server};

/// Creates `events` and loads `rows` generated events through the HTTP API.
pub async fn load_events(c: &reqwest::Client, s: &Server, dir: &std::path::Path, rows: u64) {
    load_events_spaced(c, s, dir, rows, 1).await
}

/// [`load_events`] with events `step_ms` apart on average (the last near now).
pub async fn load_events_spaced(
    c: &reqwest::Client,
    s: &Server,
    dir: &std::path::Path,
    rows: u64,
    step_ms: u64,
) {
    create_table(c, s, basalt_ingest::gen::EVENTS_SPEC).await;
    let file = crate::harness::gen_events_parquet(dir, rows, step_ms);
    let r = c
        .post(s.url("/tables/events/ingest"))
        .header("content-type", "application/vnd.apache.parquet")
        .body(std::fs::read(&file).unwrap())
        .send()
        .await
        .unwrap();
    let status = r.status();
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!((status.as_u16(), v), (200, json!({ "rows": rows })));
}

/// Creates `live_events`, the events schema fed by the built-in generator with `generator`
/// as its source settings.
pub async fn create_live_events(c: &reqwest::Client, s: &Server, generator: serde_json::Value) {
    let mut live: serde_json::Value =
        serde_json::from_str(basalt_ingest::gen::EVENTS_SPEC).unwrap();
    live["name"] = "live_events".into();
    live["source"] = json!({ "generator": generator });
    let r = c.post(s.url("/tables")).json(&live).send().await.unwrap();
    assert_eq!(r.status(), 201);
}

/// Runs a client script of `tests/clients` with `python`; it must succeed and print `done`.
pub fn run_client_script(python: &str, script: &str, args: &[&str], done: &str) {
    let out = Command::new(python)
        .arg(repo_path(&format!("tests/clients/{script}")))
        .args(args)
        .output()
        .unwrap();
    let stdout = succeeded(&out);
    assert!(stdout.contains(done), "{stdout}");
}

fn host_port(pg: &str) -> (&str, &str) {
    pg.rsplit_once(':').expect("host:port")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_clients_and_grafana_sql() {
    let Some(python) = service_env("BASALT_TEST_PG_CLIENTS", "postgres_clients_and_grafana_sql")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), None);
    let c = reqwest::Client::new();
    load_events(&c, &s, dir.path(), 20_000).await;
    let (host, port) = host_port(&s.pg);
    run_client_script(
        &python,
        "pg_clients.py",
        &[host, port],
        "client checks passed",
    );
}

/// For a client of the matrix: the service variable `var` (skipped when unset), and a
/// server with `events` loaded (20,000 rows) with its PostgreSQL host and port.
async fn matrix_server(
    var: &str,
    test: &str,
) -> Option<(String, tempfile::TempDir, Server, String, String)> {
    let value = service_env(var, test)?;
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), None);
    load_events(&reqwest::Client::new(), &s, dir.path(), 20_000).await;
    let (host, port) = host_port(&s.pg);
    let (host, port) = (host.to_string(), port.to_string());
    Some((value, dir, s, host, port))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_drivers_sql_tools_and_pinotdb() {
    let test = "python_drivers_sql_tools_and_pinotdb";
    let Some((python, _dir, s, host, port)) = matrix_server("BASALT_TEST_PG_CLIENTS", test).await
    else {
        return;
    };
    let args = [host.as_str(), &port, &s.base];
    run_client_script(&python, "pg_drivers.py", &args, "driver checks passed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgjdbc_metadata_prepared_statements_and_cursors() {
    let test = "pgjdbc_metadata_prepared_statements_and_cursors";
    let Some((jar, _dir, _s, host, port)) = matrix_server("BASALT_TEST_PGJDBC", test).await else {
        return;
    };
    let out = Command::new("java")
        .arg("-cp")
        .arg(&jar)
        .arg(repo_path("tests/clients/PgJdbc.java"))
        .args([host, port])
        .output()
        .unwrap();
    let stdout = succeeded(&out);
    assert!(stdout.contains("jdbc checks passed"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn superset_charts_over_postgres_and_pinot() {
    let test = "superset_charts_over_postgres_and_pinot";
    let Some(python) = service_env("BASALT_TEST_SUPERSET_PYTHON", test) else {
        return;
    };
    let Some((superset, _dir, s, host, port)) = matrix_server("BASALT_TEST_SUPERSET", test).await
    else {
        return;
    };
    let args = [superset.as_str(), &host, &port, &s.base];
    run_client_script(
        &python,
        "superset_check.py",
        &args,
        "superset checks passed",
    );
}

fn psql(pg: &str, user: &str, password: &str, sql: &str) -> std::process::Output {
    let (host, port) = host_port(pg);
    Command::new("psql")
        .args([
            "-X", "-At", "-h", host, "-p", port, "-U", user, "-w", "basalt", "-c", sql,
        ])
        .env("PGPASSWORD", password)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_guard_postgres_and_http() {
    if service_env("BASALT_TEST_PG_CLIENTS", "tokens_guard_postgres_and_http").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        &dir.path().join("data"),
        Some("[auth]\ntokens = { grafana = \"s3cret\", ops = \"other\" }\n"),
    );
    let c = reqwest::Client::new();

    // HTTP: 401 without or with a wrong token; /health stays open.
    let r = c.get(s.url("/tables")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("authentication required"),
        "{v}"
    );
    let r = c
        .get(s.url("/tables"))
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(c.get(s.url("/health")).send().await.unwrap().status(), 200);
    let r = c
        .get(s.url("/tables"))
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .post(s.url("/query/sql"))
        .basic_auth("ops", Some("other"))
        .json(&json!({"sql": "SELECT 1 AS one"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // PostgreSQL: the token is the user's password.
    let ok = psql(&s.pg, "grafana", "s3cret", "SELECT 41 + 1");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "42");
    for (user, password) in [("grafana", "other"), ("nobody", "s3cret"), ("grafana", "")] {
        let bad = psql(&s.pg, user, password, "SELECT 1");
        let err = String::from_utf8_lossy(&bad.stderr);
        assert!(!bad.status.success(), "{user}/{password} logged in");
        assert!(
            err.contains("password") || err.contains("authentication"),
            "{err}"
        );
    }
}

/// DATE and DECIMAL columns end to end: a spec declares them, NDJSON loads them (a decimal
/// rounded to the column's scale), HTTP answers Pinot's BIG_DECIMAL as exact text, and
/// PostgreSQL clients see `date` and `numeric` (OIDs 1082 and 1700) in text (psql) and
/// binary (psycopg 3) results, with exact sums.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dates_and_decimals_through_http_and_postgres() {
    let Some(python) = service_env(
        "BASALT_TEST_PG_CLIENTS",
        "dates_and_decimals_through_http_and_postgres",
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), None);
    let c = reqwest::Client::new();
    let spec = json!({
        "name": "prices",
        "time_column": "day",
        "columns": [
            {"name": "day", "type": "DATE", "nullable": false},
            {"name": "sku", "type": "STRING"},
            {"name": "price", "type": "DECIMAL(12, 2)", "index": ["range"]}
        ]
    });
    let r = c.post(s.url("/tables")).json(&spec).send().await.unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    // A bad type is refused with what is wrong.
    let mut bad = spec.clone();
    bad["name"] = "bad".into();
    bad["columns"][2]["type"] = "DECIMAL(40, 2)".into();
    let r = c.post(s.url("/tables")).json(&bad).send().await.unwrap();
    let why = r.text().await.unwrap();
    assert!(why.contains("DECIMAL") && why.contains("18"), "{why}");

    let rows = "{\"day\":\"2026-01-02\",\"sku\":\"a\",\"price\":0.1}\n\
                {\"day\":\"2026-01-02\",\"sku\":\"b\",\"price\":0.2}\n\
                {\"day\":\"2026-01-03\",\"sku\":\"c\",\"price\":\"1234567890.125\"}\n\
                {\"day\":\"2026-01-04\",\"sku\":\"d\"}\n";
    let r = c
        .post(s.url("/tables/prices/ingest"))
        .header("content-type", "application/x-ndjson")
        .body(rows)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());

    let v = crate::harness::sql(
        &c,
        &s,
        "SELECT day, sum(price) AS total FROM prices WHERE price >= 0.1 AND day < DATE '2026-01-04' \
         GROUP BY day ORDER BY day",
    )
    .await;
    assert_eq!(v["exceptions"], json!([]), "{v}");
    assert_eq!(
        v["resultTable"]["dataSchema"]["columnDataTypes"],
        json!(["STRING", "BIG_DECIMAL"]),
        "{v}"
    );
    assert_eq!(
        v["resultTable"]["rows"],
        json!([["2026-01-02", "0.30"], ["2026-01-03", "1234567890.13"]]),
        "{v}"
    );

    // psql: text results, and the types PostgreSQL would name.
    let out = psql(
        &s.pg,
        "basalt",
        "",
        "SELECT day, price, pg_typeof(day)::text, pg_typeof(price)::text FROM prices \
         WHERE sku = 'c'",
    );
    let text = succeeded(&out);
    assert_eq!(
        text.trim(),
        "2026-01-03|1234567890.13|date|numeric",
        "{text}"
    );

    // psycopg 3 asks for binary results: exact Decimals and dates, OIDs 1082 and 1700.
    let (host, port) = host_port(&s.pg);
    let script = r#"
import datetime, decimal, sys, psycopg
with psycopg.connect(host=sys.argv[1], port=sys.argv[2], user="basalt", dbname="basalt") as conn:
    cur = conn.cursor(binary=True)
    cur.execute("SELECT day, price, sum(price) OVER () FROM prices WHERE price IS NOT NULL ORDER BY price")
    assert [d.type_code for d in cur.description[:2]] == [1082, 1700], cur.description
    rows = cur.fetchall()
    assert rows[0][:2] == (datetime.date(2026, 1, 2), decimal.Decimal("0.10")), rows
    assert rows[2][1] == decimal.Decimal("1234567890.13"), rows
    assert rows[0][2] == decimal.Decimal("1234567890.43"), rows
    # A Decimal parameter sent in binary (numeric_send's layout) binds to the DECIMAL column.
    cur.execute("SELECT sku FROM prices WHERE price = %b", [decimal.Decimal("0.10")])
    assert cur.fetchall() == [("a",)]
    cur = conn.cursor()
    cur.execute("SELECT price - 0.05 FROM prices WHERE sku = 'a'")
    print(cur.fetchone()[0])
print("typed checks passed")
"#;
    let out = Command::new(&python)
        .args(["-c", script, host, port])
        .output()
        .unwrap();
    let stdout = succeeded(&out);
    assert!(stdout.contains("typed checks passed"), "{stdout}");
}
