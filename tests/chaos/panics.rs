//! Panics inside the server (injected by failpoints) are caught: a panicking ingest or seal
//! thread restarts its session from the checkpoints with the table reported in error
//! meanwhile, and still lands every event once; a panicking segment builder fails only its
//! request (all of them panicking fails it without hanging), deleting what it staged. The
//! server stays up throughout.

use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{files, get_json, scalar, wait_for, Server};

const SPEC: &str = include_str!("../../ingestion/src/gen_events_spec.json");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_ingest_or_seal_thread_restarts_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_with(
        &dir.path().join("data"),
        None,
        &[(
            "BASALT_FAILPOINTS",
            "ingest.flush=panic@6;seal.build=panic@2",
        )],
    );
    let c = reqwest::Client::new();
    let mut v: Value = serde_json::from_str(SPEC).unwrap();
    v["name"] = "gen".into();
    v["source"] = json!({"generator": {"events_per_second": 3000, "partitions": 2,
                                       "max_events": 3000}});
    v["segment"] = json!({"max_rows": 1000, "max_age": "1s"});
    let r = c.post(s.url("/tables")).json(&v).send().await.unwrap();
    assert_eq!(r.status(), 201);
    // Watch health while the failpoints fire: the table is reported, with the panic named.
    let mut saw_panic = false;
    let start = std::time::Instant::now();
    loop {
        let h = get_json(&c, &s, "/health").await;
        if h["status"] == "degraded" && h["ingestion_problems"].to_string().contains("panicked") {
            saw_panic = true;
        }
        let n = scalar(&c, &s, "SELECT count(*) FROM gen")
            .await
            .as_u64()
            .unwrap();
        assert!(n <= 6000, "{n} > 6000");
        let sealed = get_json(&c, &s, "/tables/gen").await["stats"]["rows"]
            .as_u64()
            .unwrap_or(0);
        if n == 6000 && sealed == 6000 && saw_panic {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "{n} rows ({sealed} sealed), panic seen: {saw_panic}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        scalar(&c, &s, "SELECT count(DISTINCT event_id) FROM gen").await,
        json!(6000)
    );
    wait_for("health to recover", Duration::from_secs(30), || {
        let (c, s) = (c.clone(), &s);
        async move { (get_json(&c, s, "/health").await["status"] == "ok").then_some(()) }
    })
    .await;
}

/// Starts a server in `dir` whose segment builders hit `failpoint`, with `events` sealing
/// every 1,000 rows, and sends it `rows` events: the request must fail within 30 s naming
/// the panic, leaving no row and no staged segment. The server, a client and the body.
async fn failed_batch_ingest(
    dir: &std::path::Path,
    failpoint: &str,
    rows: usize,
) -> (Server, reqwest::Client, String) {
    let data = dir.join("data");
    let s = Server::start_with(&data, None, &[("BASALT_FAILPOINTS", failpoint)]);
    let c = reqwest::Client::new();
    let mut v: Value = serde_json::from_str(SPEC).unwrap();
    v["segment"] = json!({"max_rows": 1000});
    let r = c.post(s.url("/tables")).json(&v).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let body: String = (0..rows)
        .map(|i| format!("{{\"ts\": {i}, \"event_id\": \"e{i}\"}}\n"))
        .collect();
    let r = tokio::time::timeout(Duration::from_secs(30), ingest(&c, &s, body.clone()))
        .await
        .expect("the ingest request hung after a builder failed")
        .unwrap();
    assert_eq!(r.status().as_u16(), 500);
    let msg = r.text().await.unwrap();
    assert!(msg.contains("panicked"), "{msg}");
    assert_eq!(
        scalar(&c, &s, "SELECT count(*) FROM events").await,
        json!(0)
    );
    let left = files(&data.join("deepstore/segments/events"));
    assert!(left.is_empty(), "staged segments left: {left:?}");
    (s, c, body)
}

fn ingest(
    c: &reqwest::Client,
    s: &Server,
    body: String,
) -> impl std::future::Future<Output = reqwest::Result<reqwest::Response>> {
    c.post(s.url("/tables/events/ingest"))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_segment_builder_fails_only_its_request() {
    let dir = tempfile::tempdir().unwrap();
    let (s, c, body) = failed_batch_ingest(dir.path(), "batch.build=panic@2", 5000).await;
    // The next request goes through.
    let r = ingest(&c, &s, body).await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        scalar(&c, &s, "SELECT count(*) FROM events").await,
        json!(5000)
    );
}

/// Every segment builder panicking (all of them stop) fails the request; the decoder stops
/// instead of waiting for a builder to take its next segment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_segment_builder_panicking_fails_the_request_without_hanging() {
    let dir = tempfile::tempdir().unwrap();
    failed_batch_ingest(dir.path(), "batch.build=panic", 20_000).await;
}
