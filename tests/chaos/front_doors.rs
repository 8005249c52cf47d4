//! The HTTP and PostgreSQL front doors under hostile use, through the real binary: cross-site
//! requests, DNS rebinding, the wrong content types, tokens used beyond their role, exposure
//! without authentication, and PostgreSQL clients that hog connections, send huge messages
//! or sit idle.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::Server;

const SPEC: &str = include_str!("../../ingestion/src/gen_events_spec.json");

async fn status(r: reqwest::RequestBuilder) -> (u16, String) {
    let r = r.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_cannot_cross_sites_or_rebind() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), None);
    let c = reqwest::Client::new();
    let sql = json!({"sql": "SELECT 1"}).to_string();

    // The documented content types only: a cross-site form post cannot send JSON.
    for ct in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data",
    ] {
        let (st, body) = status(
            c.post(s.url("/tables"))
                .header("content-type", ct)
                .body(SPEC),
        )
        .await;
        assert_eq!(st, 415, "{ct}: {body}");
        let (st, _) = status(
            c.post(s.url("/query/sql"))
                .header("content-type", ct)
                .body(sql.clone()),
        )
        .await;
        assert_eq!(st, 415, "{ct}");
    }
    let (st, _) = status(
        c.post(s.url("/tables/x/ingest"))
            .header("content-type", "text/plain")
            .body("{}"),
    )
    .await;
    assert!(st == 404 || st == 415, "{st}");

    // A page on another site (its Origin) is refused, whatever it asks.
    let evil = "http://evil.example";
    let (st, body) = status(
        c.post(s.url("/tables"))
            .header("origin", evil)
            .header("content-type", "application/json")
            .body(SPEC),
    )
    .await;
    assert_eq!(st, 403, "{body}");
    assert!(body.contains("cross-site"), "{body}");
    let (st, _) = status(
        c.post(s.url("/query/sql"))
            .header("origin", evil)
            .header("content-type", "application/json")
            .body(sql.clone()),
    )
    .await;
    assert_eq!(st, 403);
    // The console's own origin passes.
    let own = s.base.clone();
    let (st, body) = status(
        c.post(s.url("/query/sql"))
            .header("origin", own)
            .header("content-type", "application/json")
            .body(sql.clone()),
    )
    .await;
    assert_eq!(st, 200, "{body}");

    // DNS rebinding: the page's own name arrives as Host while the server is unauthenticated.
    let (st, body) = status(
        c.get(s.url("/tables"))
            .header("host", "rebound.evil.example:8099"),
    )
    .await;
    assert_eq!(st, 403, "{body}");
    assert!(body.contains("DNS rebinding"), "{body}");
    let (st, _) = status(c.get(s.url("/tables")).header("host", "localhost")).await;
    assert_eq!(st, 200);
    // Nothing was created by any of it.
    let v: Value = c
        .get(s.url("/tables"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["tables"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_token_cannot_change_tables() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        &dir.path().join("data"),
        Some(
            "[auth]\ntokens = { grafana = \"read-token\", ops = { token = \"admin-token\", role = \"admin\" } }\n",
        ),
    );
    let c = reqwest::Client::new();
    let create = |token: &str| {
        c.post(s.url("/tables"))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(SPEC)
    };
    let (st, body) = status(create("read-token")).await;
    assert_eq!(st, 403, "{body}");
    assert!(body.contains("needs admin"), "{body}");
    assert_eq!(status(create("admin-token")).await.0, 201);
    let ingest = |token: &str| {
        c.post(s.url("/tables/events/ingest"))
            .bearer_auth(token)
            .header("content-type", "application/x-ndjson")
            .body("{\"ts\": 1, \"event_id\": \"a\"}\n")
    };
    assert_eq!(status(ingest("read-token")).await.0, 403);
    assert_eq!(status(ingest("admin-token")).await.0, 200);
    let query = c
        .post(s.url("/query/sql"))
        .bearer_auth("read-token")
        .json(&json!({"sql": "SELECT count(*) FROM events"}));
    let (st, body) = status(query).await;
    assert_eq!(st, 200, "{body}");
    assert!(body.contains("[[1]]"), "{body}");
    let drop = |token: &str| c.delete(s.url("/tables/events")).bearer_auth(token);
    assert_eq!(status(drop("read-token")).await.0, 403);
    // Basic credentials with trailing garbage are malformed, not accepted.
    let (st, _) = status(
        c.get(s.url("/tables"))
            .header("authorization", "Basic Z3JhZmFuYTpyZWFkLXRva2Vu!!"),
    )
    .await;
    assert_eq!(st, 401);
    assert_eq!(status(drop("admin-token")).await.0, 200);
}

#[test]
fn listening_beyond_loopback_needs_tokens_or_a_flag() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_basalt"))
        .args([
            "standalone",
            "--http-addr",
            "0.0.0.0:0",
            "--pg-addr",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dir.path().join("a"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("refusing to listen on 0.0.0.0") && err.contains("--allow-unauthenticated"),
        "{err}"
    );
    // With the flag it starts, and says so loudly.
    let mut child = Command::new(env!("CARGO_BIN_EXE_basalt"))
        .args([
            "standalone",
            "--http-addr",
            "0.0.0.0:0",
            "--pg-addr",
            "127.0.0.1:0",
            "--allow-unauthenticated",
        ])
        .arg("--data-dir")
        .arg(dir.path().join("b"))
        .env("RUST_LOG", "warn")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let lines = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut seen = Vec::new();
        for l in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let done = l.contains("listening on");
            seen.push(l);
            if done {
                break;
            }
        }
        seen
    })
    .join()
    .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let text = lines.join("\n");
    assert!(text.contains("WITHOUT AUTHENTICATION"), "{text}");
    assert!(text.contains("listening on"), "{text}");
}

async fn pg(s: &Server) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (host, port) = s.pg.rsplit_once(':').unwrap();
    let (client, conn) = tokio_postgres::connect(
        &format!("host={host} port={port} user=basalt dbname=basalt connect_timeout=10"),
        tokio_postgres::NoTls,
    )
    .await?;
    tokio::spawn(conn);
    Ok(client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connections_messages_and_idle_sessions_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        &dir.path().join("data"),
        Some("[pg]\nmax_connections = 2\nmax_message_bytes = 4096\nidle_timeout_secs = 2\n"),
    );
    // Two sessions fit; the third is told why it is refused.
    let a = pg(&s).await.unwrap();
    let b = pg(&s).await.unwrap();
    let Err(e) = pg(&s).await else {
        panic!("a third session was let in")
    };
    assert_eq!(
        e.code(),
        Some(&tokio_postgres::error::SqlState::TOO_MANY_CONNECTIONS),
        "{e}"
    );
    assert_eq!(
        a.query_one("SELECT 1 + 1", &[])
            .await
            .unwrap()
            .get::<_, i64>(0),
        2
    );
    // A message over the limit ends that session before its body is read; others go on.
    let big = format!("SELECT '{}'", "x".repeat(10_000));
    let Err(e) = b.simple_query(&big).await else {
        panic!("an oversized message was accepted")
    };
    let text = format!("{e:?}");
    assert!(
        e.code() == Some(&tokio_postgres::error::SqlState::PROGRAM_LIMIT_EXCEEDED) || b.is_closed(),
        "{text}"
    );
    drop(b);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Its slot is free again.
    let c = pg(&s).await.unwrap();
    assert_eq!(
        c.query_one("SELECT 3", &[]).await.unwrap().get::<_, i64>(0),
        3
    );
    // Idle sessions are closed after the timeout.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        a.query_one("SELECT 1", &[]).await.is_err(),
        "an idle session outlived the timeout"
    );
    let d = pg(&s).await.unwrap();
    assert_eq!(
        d.query_one("SELECT 4", &[]).await.unwrap().get::<_, i64>(0),
        4
    );
}
