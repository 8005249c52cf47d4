//! The real-time path in-process with the generator source: every offset lands exactly once
//! (as a row or a quarantine entry) across seals by rows, by bytes and by age, and across a
//! restart of the store; staged segments of a crashed seal are deleted at the next start.

use std::time::{Duration, Instant};

use crate::gen::EVENTS_SPEC;
use crate::spec::TableSpec;
use crate::store::{StoreConfig, Table, TableStore};

fn spec(name: &str, segment: serde_json::Value) -> TableSpec {
    let mut v: serde_json::Value = serde_json::from_str(EVENTS_SPEC).unwrap();
    v["name"] = name.into();
    v["source"] = serde_json::json!({"generator": {"events_per_second": 0, "partitions": 3,
        "max_events": 2000, "malformed_ratio": 0.05}});
    v["segment"] = segment;
    TableSpec::from_json(v.to_string().as_bytes()).unwrap()
}

async fn open(dir: &std::path::Path) -> std::sync::Arc<TableStore> {
    TableStore::open(StoreConfig::local(dir)).await.unwrap()
}

/// Rows and quarantine entries in sealed segments, and rows still mutable.
fn counts(t: &Table) -> (u64, u64, u64) {
    let v = t.view();
    (
        v.segments.iter().map(|s| s.meta.rows).sum(),
        v.quarantine.iter().map(|s| s.meta.rows).sum(),
        v.mutable.iter().map(|p| p.entries() as u64).sum(),
    )
}

async fn wait_sealed(t: &Table, total: u64) {
    let start = Instant::now();
    loop {
        let (rows, q, mutable) = counts(t);
        assert!(
            rows + q <= total,
            "{rows} + {q} > {total}: an offset sealed twice"
        );
        if rows + q == total && mutable == 0 {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "sealed {rows} + {q} of {total}, {mutable} mutable: {:?}",
            t.ingestion()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generator_offsets_land_once_through_seals_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let by_rows = spec(
        "by_rows",
        serde_json::json!({"max_rows": 250, "max_age": "1s"}),
    );
    let by_bytes = spec(
        "by_bytes",
        serde_json::json!({"max_rows": 100000, "max_bytes": "64KB", "max_age": "1s"}),
    );
    let (a, _) = store.create_table(by_rows).await.unwrap();
    let (b, _) = store.create_table(by_bytes).await.unwrap();
    for t in [&a, &b] {
        wait_sealed(t, 6000).await;
        let (rows, q, _) = counts(t);
        assert!(q > 150 && q < 500, "about 5% quarantined: {q}");
        assert_eq!(rows + q, 6000);
        // The status catches up within its refresh period.
        let start = Instant::now();
        loop {
            let st = t.ingestion().unwrap();
            let done = st.partitions.len() == 3
                && st
                    .partitions
                    .iter()
                    .all(|p| p.consumed_offset == Some(2000) && p.checkpoint_offset == Some(2000));
            if done {
                let quarantined: u64 = st.partitions.iter().map(|p| p.quarantined).sum();
                assert_eq!(quarantined, q, "{st:?}");
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "{st:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert!(
        a.view().segments.len() >= 6000 / 250 - 3,
        "max_rows seals: {}",
        a.view().segments.len()
    );
    assert!(
        b.view().segments.len() > 3,
        "max_bytes seals: {}",
        b.view().segments.len()
    );
    let state = a
        .home
        .metastore
        .get("by_rows")
        .await
        .unwrap()
        .unwrap()
        .value;
    assert_eq!(
        state.checkpoints.values().copied().collect::<Vec<_>>(),
        [2000, 2000, 2000]
    );
    let before = a.view().segments.len();

    // A crashed seal's upload (staged by this node, never published) is deleted at the next
    // start, and consumption resumes at the checkpoints: nothing is read twice. Another
    // node's fresh staged object stays (it may be about to publish it); an old one goes.
    let node = std::fs::read_to_string(dir.path().join("node_id")).unwrap();
    let folder = dir
        .path()
        .join("deepstore/segments/by_rows")
        .join(&a.generation);
    let orphan = folder.join(format!("by_rows__crashed__n{}.seg", node.trim()));
    std::fs::write(&orphan, b"half a segment").unwrap();
    let others = folder.join("by_rows__staged__n0123456789ab.seg");
    std::fs::write(&others, b"another node's upload").unwrap();
    let stale = folder.join("by_rows__stale__n0123456789ab.seg");
    std::fs::write(&stale, b"another node's old upload").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&stale)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - Duration::from_secs(7200))
        .unwrap();
    tokio::task::spawn_blocking({
        let s = store.clone();
        move || s.shutdown()
    })
    .await
    .unwrap();
    drop((a, b, store));
    let store = open(dir.path()).await;
    assert!(!orphan.exists(), "staged leftovers are deleted at start");
    assert!(others.exists(), "another node's fresh upload is left alone");
    assert!(
        !stale.exists(),
        "another node's upload older than the grace is deleted"
    );
    let a = store.table("by_rows").unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (rows, q, mutable) = counts(&a);
    assert_eq!(mutable, 0, "nothing left to consume after the checkpoints");
    assert_eq!(rows + q, 6000, "resumed at the checkpoints");
    assert_eq!(a.view().segments.len(), before);
    tokio::task::spawn_blocking(move || store.shutdown())
        .await
        .unwrap();
}

/// Consumes every partition and seals none: a consuming replica whose owner never seals.
#[derive(Debug)]
struct ReplicaOnly;

impl crate::store::Placement for ReplicaOnly {
    fn serves(&self, _: &TableSpec, _: &crate::metastore::SegmentMeta, _: bool) -> bool {
        true
    }

    fn consumes(&self, _: &TableSpec) -> bool {
        true
    }

    fn seals_partition(&self, _: &TableSpec, _: i32) -> bool {
        false
    }

    fn leases(&self) -> bool {
        false
    }
}

/// A consuming replica rotates its parts without sealing them and keeps them queryable;
/// when its owner never seals, it holds a bounded number of parts, starting the partition
/// again from the checkpoint, and what it answers for a partition is always every message
/// from the checkpoint up to the position it reports, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_owner_never_seals_stays_bounded_and_exact() {
    let dir = tempfile::tempdir().unwrap();
    let store = TableStore::open(StoreConfig {
        placement: std::sync::Arc::new(ReplicaOnly),
        ..StoreConfig::local(dir.path())
    })
    .await
    .unwrap();
    let mut v: serde_json::Value = serde_json::from_str(EVENTS_SPEC).unwrap();
    v["name"] = "replica".into();
    v["source"] = serde_json::json!({"generator": {"events_per_second": 0, "partitions": 2,
        "max_events": 100000, "malformed_ratio": 0.0}});
    v["segment"] = serde_json::json!({"max_rows": 200, "max_age": "1h"});
    let (t, _) = store
        .create_table(TableSpec::from_json(v.to_string().as_bytes()).unwrap())
        .await
        .unwrap();
    let start = Instant::now();
    let mut most_parts = 0;
    let mut checks = 0;
    while start.elapsed() < Duration::from_secs(6) {
        let view = t.view();
        assert!(view.segments.is_empty(), "a replica sealed");
        for p in 0..2 {
            let parts = view.mutable.iter().filter(|m| m.partition == p).count();
            most_parts = most_parts.max(parts);
            assert!(parts <= super::RETAINED_PARTS_MAX + 2, "{parts} parts held");
            let Some(read) = view.stream_readers(p, None, true) else {
                continue;
            };
            let read = read.unwrap();
            let rows: u64 = read.segments.iter().map(|s| s.row_count() as u64).sum();
            // Every message is a row: the rows are exactly offsets 0 up to the position
            // (at most, for rows appended after the position was read; never fewer).
            if let Some(at) = read.position {
                assert!(
                    rows <= at as u64,
                    "partition {p}: {rows} rows past position {at}"
                );
                checks += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(checks > 50, "only {checks} checks");
    assert!(
        most_parts > super::RETAINED_PARTS_MAX,
        "never rotated enough to restart: {most_parts} parts at most"
    );
    tokio::task::spawn_blocking(move || store.shutdown())
        .await
        .unwrap();
}
