//! Against a real S3-compatible store (SeaweedFS, started by `tests/services/services.sh`):
//! the metastore contract with conditional writes, and the deep store as the source of truth
//! — a server with an empty local data dir finds every table and segment there.
//!
//! Needs `BASALT_TEST_S3=s3://bucket` and the AWS_* variables (`services.sh env`). Without
//! them the tests say so and pass, unless `BASALT_REQUIRE_SERVICES` is set (as in `.ci/run`),
//! where a missing service is a failure.

use std::sync::Arc;

use futures::TryStreamExt;
use object_store::ObjectStore;
use serde_json::json;

use crate::harness::{scalar, service_env, sql, Server};

const SPEC: &str = include_str!("../../ingestion/src/gen_events_spec.json");

/// `s3://bucket/<unique prefix>` for one test, or `None` when no S3 service is configured.
pub fn s3_prefix(test: &str) -> Option<String> {
    let url = service_env("BASALT_TEST_S3", test)?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    Some(format!("{}/{test}-{nanos}", url.trim_end_matches('/')))
}

/// Server config that lets table specs name a deep store under `url` (outside the server's
/// own, which the default `storage.allowed_roots` refuses).
pub fn allowing(url: &str) -> String {
    format!("[storage]\nallowed_roots = [\"{url}\"]\n")
}

/// The deep store at `url` and the paths of every object in it.
pub async fn deep_store_objects(
    dir: &std::path::Path,
    url: &str,
) -> (Arc<dyn ObjectStore>, Vec<String>) {
    let (store, _) = basalt_ingest::store::open_deep_store(dir, Some(url)).unwrap();
    let objects = store
        .list(None)
        .map_ok(|o| o.location.to_string())
        .try_collect()
        .await
        .unwrap();
    (store, objects)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metastore_contract_on_s3() {
    let Some(url) = s3_prefix("contract") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = basalt_ingest::store::open_deep_store(dir.path(), Some(&url)).unwrap();
    let ms = basalt_ingest::metastore::ObjectStoreMetastore::open(store)
        .await
        .unwrap();
    basalt_ingest::metastore::contract::run(Arc::new(ms)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_deep_store_is_the_source_of_truth() {
    let Some(url) = s3_prefix("deepstore") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = format!("[server]\ndeep_store = \"{url}\"\n");
    let c = reqwest::Client::new();
    let s = Server::start(&dir.path().join("first"), Some(&config));
    let r = c
        .post(s.url("/tables"))
        .header("content-type", "application/json")
        .body(SPEC)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let nd = dir.path().join("events.ndjson");
    let st = std::process::Command::new(env!("CARGO_BIN_EXE_basalt"))
        .args(["gen-events", "--rows", "25000", "--seed", "7", "--out"])
        .arg(&nd)
        .status()
        .unwrap();
    assert!(st.success());
    let r = c
        .post(s.url("/tables/events/ingest"))
        .header("content-type", "application/x-ndjson")
        .body(std::fs::read(&nd).unwrap())
        .send()
        .await
        .unwrap();
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v, json!({"rows": 25000}));
    let q = "SELECT country, count(*) AS n, sum(revenue) AS r FROM events GROUP BY country ORDER BY n DESC, country LIMIT 5";
    let before = sql(&c, &s, q).await["resultTable"].clone();
    s.kill();

    // The segment and the metastore state are objects in the bucket.
    let (store, objects) = deep_store_objects(dir.path(), &url).await;
    assert!(
        objects
            .iter()
            .any(|p| p.starts_with("segments/events/") && p.ends_with(".seg")),
        "{objects:?}"
    );
    assert!(
        objects
            .iter()
            .any(|p| p.starts_with("_metastore/tables/events/")),
        "{objects:?}"
    );

    // A server with an empty local data dir and the same deep store finds everything.
    let s = Server::start(&dir.path().join("second"), Some(&config));
    assert_eq!(
        scalar(&c, &s, "SELECT count(*) FROM events").await,
        json!(25000)
    );
    assert_eq!(sql(&c, &s, q).await["resultTable"], before);
    let r = c.delete(s.url("/tables/events")).send().await.unwrap();
    assert!(r.status().is_success());
    let left: Vec<_> = store.list(None).try_collect().await.unwrap();
    assert!(
        crate::realtime::only_tombstone(&left, "events"),
        "drop removes the table's objects: {left:?}"
    );
}
