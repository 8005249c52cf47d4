//! The command line's client commands through the real binary against a real server:
//! `ingest` (summary per file), `sql` (table, CSV, JSON, standard input), `tables`, `table`,
//! `completions`, tokens, and the usual conventions on failure (exit 1, nothing on stdout,
//! a message on stderr naming the problem).

use std::io::Write;
use std::process::{Command, Output, Stdio};

use crate::harness::{create_table, succeeded, Server};

fn basalt(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_basalt"))
        .args(args)
        .env_remove("BASALT_SERVER")
        .env_remove("BASALT_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

/// Fails with exit code 1, nothing on stdout, and `needle` in the message on stderr.
fn fails(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        stderr.starts_with("error: ") && stderr.contains(needle),
        "{needle:?} not in {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_line_client_commands() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), None);
    let server = s.base.as_str();
    create_table(&reqwest::Client::new(), &s, basalt_ingest::gen::EVENTS_SPEC).await;

    // ingest: one summary line per file, with the server's row count.
    let nd = dir.path().join("a.ndjson");
    let pq = dir.path().join("b.parquet");
    for (f, fmt, rows) in [(&nd, "ndjson", "3000"), (&pq, "parquet", "2000")] {
        let f = f.to_str().unwrap();
        succeeded(&basalt(
            &["gen-events", "--rows", rows, "--format", fmt, "--out", f],
            None,
        ));
    }
    let out = succeeded(&basalt(
        &[
            "ingest",
            "--server",
            server,
            "--table",
            "events",
            nd.to_str().unwrap(),
            pq.to_str().unwrap(),
        ],
        None,
    ));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[0].contains("a.ndjson: 3,000 rows") && lines[0].contains("rows/s"));
    assert!(lines[1].contains("b.parquet: 2,000 rows"), "{out}");
    fails(
        &basalt(
            &[
                "ingest",
                "--server",
                server,
                "--table",
                "nope",
                nd.to_str().unwrap(),
            ],
            None,
        ),
        "table \"nope\" does not exist",
    );
    fails(
        &basalt(
            &["ingest", "--server", server, "--table", "events", "x.txt"],
            None,
        ),
        "unknown extension",
    );

    // sql: a table by default, CSV and JSON on request, the query from stdin.
    let q = "SELECT device, count(*) AS n FROM events GROUP BY device ORDER BY device";
    let table = succeeded(&basalt(&["sql", "--server", server, q], None));
    assert!(
        table.contains("device") && table.contains("mobile"),
        "{table}"
    );
    let counts: u64 = succeeded(&basalt(
        &["sql", "--server", server, "--format", "csv", q],
        None,
    ))
    .lines()
    .skip(1)
    .map(|l| l.rsplit(',').next().unwrap().parse::<u64>().unwrap())
    .sum();
    assert_eq!(counts, 5_000);
    let rows_line = format!(
        "({} rows,",
        table.lines().filter(|l| l.contains('│')).count() - 1
    );
    assert!(table.contains(&rows_line), "{rows_line} {table}");
    let json: serde_json::Value = serde_json::from_str(&succeeded(&basalt(
        &["sql", "--server", server, "--format", "json"],
        Some("SELECT count(*) AS n, max(latency_ms) > 0 AS positive FROM events"),
    )))
    .unwrap();
    assert_eq!(json, serde_json::json!([{"n": 5000, "positive": true}]));
    let csv = succeeded(&basalt(
        &["sql", "--server", server, "--format", "csv", "-"],
        Some("SELECT 'a,b' AS s, 1 AS n"),
    ));
    assert_eq!(csv, "s,n\n\"a,b\",1\n");
    fails(
        &basalt(
            &["sql", "--server", server, "SELECT nope FROM events"],
            None,
        ),
        "nope",
    );
    fails(
        &basalt(&["sql", "--server", server], Some("  ")),
        "no query",
    );
    fails(
        &basalt(&["sql", "--server", "http://127.0.0.1:9", "SELECT 1"], None),
        "cannot reach",
    );
    fails(
        &basalt(&["sql", "--server", "127.0.0.1:8099", "SELECT 1"], None),
        "not an http",
    );

    // tables and table.
    let tables = succeeded(&basalt(&["tables", "--server", server], None));
    assert!(
        tables.contains("events") && tables.contains("5,000") && tables.contains("batch"),
        "{tables}"
    );
    let one = succeeded(&basalt(&["table", "--server", server, "events"], None));
    assert!(
        one.contains("time column ts")
            && one.contains("5,000 rows")
            && one.contains("latency_ms")
            && one.contains("DOUBLE")
            && one.contains("inverted"),
        "{one}"
    );
    fails(
        &basalt(&["table", "--server", server, "nope"], None),
        "table \"nope\" does not exist",
    );

    // completions for the usual shells.
    for shell in ["bash", "zsh", "fish"] {
        let script = succeeded(&basalt(&["completions", shell], None));
        assert!(
            script.contains("tables") && script.contains("ingest"),
            "{shell}"
        );
    }
    let out = basalt(&["completions", "tcsh"], None);
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_line_sends_its_token() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        &dir.path().join("data"),
        Some("[auth]\ntokens = { cli = \"s3cret\" }\n"),
    );
    fails(&basalt(&["tables", "--server", &s.base], None), "401");
    let out = Command::new(env!("CARGO_BIN_EXE_basalt"))
        .args([
            "sql",
            "--server",
            &s.base,
            "--format",
            "csv",
            "SELECT 1 AS one",
        ])
        .env("BASALT_TOKEN", "s3cret")
        .output()
        .unwrap();
    assert_eq!(succeeded(&out), "one\n1\n");
}
