//! `kill -9` during Kafka ingestion with seals to S3, at seeded random moments and at exact
//! steps (a failpoint aborts the process just before a seal's publish, or just after its
//! metastore commit): after every restart the table holds exactly the events produced, each
//! once. The seed is printed; `BASALT_CHAOS_SEED` replays a run, `BASALT_CHAOS_LONG=1` runs
//! 40 rounds instead of 10.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::harness::{service_env, Server};
use crate::kafka::{create_topic, produce_all, producer, unique};
use crate::realtime::{count, create, events, table_spec, wait_count, PARTITIONS, SERIAL};
use crate::s3::{allowing, s3_prefix};

/// Rounds and seed of a chaos run.
pub(crate) fn plan(default_rounds: usize) -> (usize, u64) {
    let long = std::env::var("BASALT_CHAOS_LONG").is_ok_and(|v| v == "1");
    let seed = std::env::var("BASALT_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    let rounds = if long {
        default_rounds * 4
    } else {
        default_rounds
    };
    eprintln!("chaos: {rounds} rounds, BASALT_CHAOS_SEED={seed}");
    (rounds, seed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_at_random_points_never_loses_or_duplicates_an_event() {
    let Some(brokers) = service_env("BASALT_TEST_KAFKA", "chaos kill_9") else {
        return;
    };
    let Some(deep_store) = s3_prefix("chaos-kill9") else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let (rounds, seed) = plan(10);
    let mut rng = StdRng::seed_from_u64(seed);
    let (topic, table) = (unique("chaos"), unique("chaos"));
    create_topic(&brokers, &topic, PARTITIONS).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = allowing(&deep_store);
    let c = reqwest::Client::new();
    // Small, frequent seals, so kills land during them.
    let mut spec: serde_json::Value =
        serde_json::from_str(&table_spec(&table, &brokers, &topic, Some(&deep_store))).unwrap();
    spec["segment"] = serde_json::json!({"max_rows": 500, "max_age": "1s"});
    let spec = spec.to_string();
    let total = format!("SELECT count(*) FROM {table}");
    let distinct = format!("SELECT count(DISTINCT event_id) FROM {table}");
    let p = producer(&brokers);

    let mut s = Server::start(&data, Some(&config));
    create(&c, &s, &spec).await;
    let mut produced = 0u64;
    for round in 0..rounds {
        let chunk = rng.random_range(300..1500u64);
        let msgs = events(produced, produced + chunk);
        tokio::task::block_in_place(|| produce_all(&p, &topic, &msgs));
        produced += chunk;
        // Every fifth round crashes at an exact step instead of at a random moment.
        let failpoint = match round % 5 {
            3 => Some("seal.before_publish=abort@2"),
            4 => Some("publish.after_commit=abort@2"),
            _ => None,
        };
        if let Some(fp) = failpoint {
            s.kill();
            s = Server::start_with(&data, Some(&config), &[("BASALT_FAILPOINTS", fp)]);
            let more = rng.random_range(600..1500u64);
            let msgs = events(produced, produced + more);
            tokio::task::block_in_place(|| produce_all(&p, &topic, &msgs));
            produced += more;
            let start = std::time::Instant::now();
            while !s.exited() && start.elapsed() < Duration::from_secs(60) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert!(s.exited(), "round {round}: failpoint {fp} never fired");
        } else {
            let delay = rng.random_range(0..2500u64);
            tokio::time::sleep(Duration::from_millis(delay)).await;
            s.kill();
        }
        s = Server::start(&data, Some(&config));
        wait_count(&c, &s, &total, produced).await;
        assert_eq!(
            count(&c, &s, &distinct).await,
            produced,
            "round {round}: an event counted twice (seed {seed})"
        );
    }
    crate::harness::drop_table(&c, &s, &table).await;
}
