//! What a crash or a damaged disk leaves behind, recovered through the real binary: a
//! truncated cache file and a deleted data dir (fetched again from S3), a segment that
//! cannot be opened (that table unavailable, the others serving), a drop interrupted between
//! its steps (finished at the next start, the name usable again), and a `kill -9` in the
//! middle of a 1 GiB batch ingest (no partial rows, no orphans).

use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{files, get_json, scalar, sql, wait_for, Server};
use crate::s3::{deep_store_objects, s3_prefix};

const SPEC: &str = include_str!("../../ingestion/src/gen_events_spec.json");

async fn create(c: &reqwest::Client, s: &Server, name: &str) {
    let mut v: Value = serde_json::from_str(SPEC).unwrap();
    v["name"] = name.into();
    v["segment"] = json!({"max_rows": 20_000});
    let r = c.post(s.url("/tables")).json(&v).send().await.unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
}

fn rows(from: u64, to: u64) -> String {
    (from..to)
        .map(|i| {
            format!(
                "{{\"ts\": {}, \"event_id\": \"e{i}\", \"country\": \"c{}\"}}\n",
                1_700_000_000_000u64 + i,
                i % 7
            )
        })
        .collect()
}

async fn ingest(c: &reqwest::Client, s: &Server, table: &str, body: String) -> u16 {
    c.post(s.url(&format!("/tables/{table}/ingest")))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_caches_and_lost_data_dirs_come_back_from_s3() {
    let Some(url) = s3_prefix("chaos-cache") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = format!("[server]\ndeep_store = \"{url}\"\n");
    let c = reqwest::Client::new();
    let s = Server::start(&data, Some(&config));
    create(&c, &s, "cached").await;
    assert_eq!(ingest(&c, &s, "cached", rows(0, 50_000)).await, 200);
    let q = "SELECT count(*), count(DISTINCT event_id) FROM cached";
    let want = json!([[50_000, 50_000]]);
    assert_eq!(sql(&c, &s, q).await["resultTable"]["rows"], want);
    s.kill();

    // Truncate one cached segment and flip a byte in the middle of another.
    let cached: Vec<_> = files(&data.join("cache"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    assert!(cached.len() >= 2, "{cached:?}");
    let whole = std::fs::metadata(&cached[0]).unwrap().len();
    let f = std::fs::File::options()
        .write(true)
        .open(&cached[0])
        .unwrap();
    f.set_len(whole / 2).unwrap();
    let mut bytes = std::fs::read(&cached[1]).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&cached[1], bytes).unwrap();
    let s = Server::start(&data, Some(&config));
    assert_eq!(sql(&c, &s, q).await["resultTable"]["rows"], want);
    assert_eq!(
        std::fs::metadata(&cached[0]).unwrap().len(),
        whole,
        "fetched again"
    );
    assert_eq!(get_json(&c, &s, "/health").await["status"], "ok");
    s.kill();

    // The whole data dir is lost: the deep store has everything.
    std::fs::remove_dir_all(&data).unwrap();
    let s = Server::start(&data, Some(&config));
    assert_eq!(sql(&c, &s, q).await["resultTable"]["rows"], want);
    crate::harness::drop_table(&c, &s, "cached").await;
    let (_, objects) = deep_store_objects(dir.path(), &url).await;
    assert!(
        !objects.iter().any(|o| o.starts_with("segments/cached")),
        "{objects:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_that_cannot_be_opened_makes_one_table_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let c = reqwest::Client::new();
    let s = Server::start(&data, None);
    create(&c, &s, "broken").await;
    create(&c, &s, "fine").await;
    assert_eq!(ingest(&c, &s, "broken", rows(0, 30_000)).await, 200);
    assert_eq!(ingest(&c, &s, "fine", rows(0, 1000)).await, 200);
    s.kill();
    // A local deep store's segment loses its footer (a torn write on a disk without fsync).
    let seg = files(&data.join("deepstore/segments/broken"))
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "seg"))
        .unwrap();
    let len = std::fs::metadata(&seg).unwrap().len();
    std::fs::File::options()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len - 100)
        .unwrap();
    let s = Server::start(&data, None);
    // The server serves the other table and says which one is unavailable and why.
    assert_eq!(
        scalar(&c, &s, "SELECT count(*) FROM fine").await,
        json!(1000)
    );
    let h = get_json(&c, &s, "/health").await;
    assert_eq!(h["status"], "degraded", "{h}");
    assert_eq!(h["tables_unavailable"][0]["table"], "broken", "{h}");
    let v = sql(&c, &s, "SELECT count(*) FROM broken").await;
    assert_eq!(v["exceptions"][0]["errorCode"], 235, "{v}");
    assert!(
        v["exceptions"][0]["message"]
            .as_str()
            .unwrap()
            .contains("unavailable"),
        "{v}"
    );
    let r = c.get(s.url("/tables/broken")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 503);
    let tables = get_json(&c, &s, "/tables").await;
    assert_eq!(tables["tables"], json!(["broken", "fine"]), "{tables}");
    // An operator can still drop it; the name is then free.
    crate::harness::drop_table(&c, &s, "broken").await;
    create(&c, &s, "broken").await;
    assert_eq!(
        scalar(&c, &s, "SELECT count(*) FROM broken").await,
        json!(0)
    );
    assert_eq!(get_json(&c, &s, "/health").await["status"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drop_interrupted_by_a_crash_is_finished_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let c = reqwest::Client::new();
    for failpoint in ["drop.after_tombstone=abort", "drop.after_delete=abort"] {
        let s = Server::start(&data, None);
        create(&c, &s, "doomed").await;
        assert_eq!(ingest(&c, &s, "doomed", rows(0, 30_000)).await, 200);
        s.kill();
        let mut s = Server::start_with(&data, None, &[("BASALT_FAILPOINTS", failpoint)]);
        // The process dies inside the DELETE.
        let _ = c.delete(s.url("/tables/doomed")).send().await;
        wait_for(
            "the failpoint to abort the server",
            Duration::from_secs(20),
            || {
                let exited = s.exited();
                async move { exited.then_some(()) }
            },
        )
        .await;
        let s = Server::start(&data, None);
        // Gone for every reader, its objects deleted, the name free for a new table.
        let tables = get_json(&c, &s, "/tables").await;
        assert_eq!(tables["tables"], json!([]), "{failpoint}: {tables}");
        let left: Vec<_> = files(&data.join("deepstore/segments/doomed"));
        assert!(left.is_empty(), "{failpoint}: {left:?}");
        create(&c, &s, "doomed").await;
        assert_eq!(
            scalar(&c, &s, "SELECT count(*) FROM doomed").await,
            json!(0)
        );
        crate::harness::drop_table(&c, &s, "doomed").await;
        s.kill();
    }
}

/// A body of `total` NDJSON bytes, produced as it is sent.
fn streamed_body(total: u64) -> reqwest::Body {
    let stream = futures::stream::unfold(0u64, move |sent| async move {
        if sent >= total {
            return None;
        }
        let start = sent / 100;
        let chunk = rows(start, start + 20_000);
        let n = chunk.len() as u64;
        Some((Ok::<_, std::io::Error>(bytes::Bytes::from(chunk)), sent + n))
    });
    reqwest::Body::wrap_stream(stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_in_the_middle_of_a_1_gib_ingest_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let c = reqwest::Client::new();
    let s = Server::start(&data, None);
    create(&c, &s, "big").await;
    assert_eq!(ingest(&c, &s, "big", rows(0, 1000)).await, 200);
    let segments = data.join("deepstore/segments/big");
    let before = files(&segments).len();
    let upload = tokio::spawn({
        let (c, url) = (c.clone(), s.url("/tables/big/ingest"));
        async move {
            let _ = c
                .post(url)
                .header("content-type", "application/x-ndjson")
                .body(streamed_body(1 << 30))
                .send()
                .await;
        }
    });
    // Kill once a few segments of the request are staged.
    wait_for("segments to be staged", Duration::from_secs(120), || {
        let n = files(&segments).len();
        async move { (n >= before + 3).then_some(()) }
    })
    .await;
    s.kill();
    upload.abort();
    // The kill may or may not land inside a local put (which leaves `<name>#<n>`); plant one
    // so the cleanup of interrupted uploads is always exercised. It is older than the grace
    // period, so it is removed whichever node wrote it.
    let generation = files(&segments)[0].parent().unwrap().to_path_buf();
    let planted = generation.join("big__0__000009__00000000__nother.seg#4");
    let f = std::fs::File::create(&planted).unwrap();
    f.set_modified(std::time::SystemTime::now() - Duration::from_secs(2 * 3600))
        .unwrap();
    drop(f);
    let s = Server::start(&data, None);
    assert_eq!(
        scalar(&c, &s, "SELECT count(*) FROM big").await,
        json!(1000)
    );
    assert!(
        !planted.exists(),
        "an interrupted upload is removed at start"
    );
    assert_eq!(files(&segments).len(), before, "orphans removed at start");
}
