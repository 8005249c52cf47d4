//! Real-time ingestion through the real binary, a real Kafka-compatible broker (tansu) and
//! a real S3 (SeaweedFS), all started by `tests/services/services.sh`: exactly N events
//! across 4 partitions with malformed messages quarantined and seals under concurrent
//! queries; kill -9 mid-stream and restart; a server with an empty data dir resuming from
//! the deep store; the broker stopped and restarted mid-stream.
//!
//! The tests share one broker (and one restarts it), so they run one at a time.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use basalt_ingest::gen::MessageGenerator;
use futures::TryStreamExt;
use object_store::ObjectStore;
use serde_json::{json, Value};

use crate::harness::{drop_table, get_json, get_text, scalar, service_env, sql, wait_for, Server};
use crate::kafka::{create_topic, produce_all, producer, unique, TestProducer};
use crate::s3::{allowing, deep_store_objects, s3_prefix};

const SPEC: &str = include_str!("../../ingestion/src/gen_events_spec.json");
pub(crate) const PARTITIONS: i32 = 4;

pub(crate) static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn produce(p: &TestProducer, topic: &str, msgs: Vec<(i32, Vec<u8>)>) {
    produce_all(p, topic, &msgs)
}

/// Good events `from..to`, spread over the partitions (event_id unique per index).
pub(crate) fn events(from: u64, to: u64) -> Vec<(i32, Vec<u8>)> {
    let g = MessageGenerator::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    (from..to)
        .map(|i| {
            let partition = (i % PARTITIONS as u64) as i32;
            let mut buf = Vec::new();
            g.write(partition, i as i64, now, &mut buf);
            (partition, buf)
        })
        .collect()
}

/// Malformed messages of three kinds.
fn malformed(n: u64) -> Vec<(i32, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let payload: &[u8] = match i % 3 {
                0 => b"{\"event_id\":\"broken",
                1 => br#"{"event_id":"bad","ts":"yesterday"}"#,
                _ => b"[1,2,3]",
            };
            ((i % PARTITIONS as u64) as i32, payload.to_vec())
        })
        .collect()
}

pub(crate) fn table_spec(
    table: &str,
    brokers: &str,
    topic: &str,
    deep_store: Option<&str>,
) -> String {
    let mut v: Value = serde_json::from_str(SPEC).unwrap();
    v["name"] = table.into();
    v["source"] = json!({"kafka": {"brokers": brokers, "topic": topic, "format": "json",
        "start": "earliest", "properties": {"session.timeout.ms": "6000"}}});
    v["segment"] = json!({"max_rows": 700, "max_age": "3s", "max_bytes": "256MB"});
    if let Some(d) = deep_store {
        v["deep_store"] = d.into();
    }
    v.to_string()
}

pub(crate) async fn create(c: &reqwest::Client, s: &Server, spec: &str) -> Value {
    crate::harness::create_table(c, s, spec).await
}

pub(crate) async fn count(c: &reqwest::Client, s: &Server, q: &str) -> u64 {
    scalar(c, s, q).await.as_u64().unwrap()
}

pub(crate) async fn wait_count(c: &reqwest::Client, s: &Server, q: &str, want: u64) {
    let start = std::time::Instant::now();
    loop {
        let n = count(c, s, q).await;
        assert!(n <= want, "{q}: {n} > {want}: an event counted twice");
        if n == want {
            return;
        }
        if start.elapsed() > Duration::from_secs(90) {
            // Say where ingestion stands, for whoever reads the failure.
            let tables = get_json(c, s, "/tables").await;
            for t in tables["tables"].as_array().into_iter().flatten() {
                let st =
                    get_json(c, s, &format!("/tables/{}/ingestion", t.as_str().unwrap())).await;
                eprintln!("ingestion of {t}: {st}");
            }
            panic!("{q}: {n} after 90 s, want {want}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A fresh topic, a server on a data dir of its own, and a table consuming the topic.
async fn topic_and_table(
    brokers: &str,
) -> (String, String, tempfile::TempDir, Server, reqwest::Client) {
    let (topic, table) = (unique("events"), unique("rt"));
    create_topic(brokers, &topic, PARTITIONS).await;
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), None);
    let c = reqwest::Client::new();
    create(&c, &s, &table_spec(&table, brokers, &topic, None)).await;
    (topic, table, dir, s, c)
}

pub(crate) fn services_script(args: &[&str]) {
    let script = std::env::var_os("BASALT_SERVICES_SCRIPT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| crate::harness::repo_path("tests/services/services.sh"));
    let st = std::process::Command::new(script)
        .args(args)
        .status()
        .unwrap();
    assert!(st.success(), "services.sh {args:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_n_events_with_quarantine_and_seals_under_concurrent_queries() {
    let Some(brokers) = service_env("BASALT_TEST_KAFKA", "realtime exactly_n") else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let (topic, table, _dir, s, c) = topic_and_table(&brokers).await;
    let s = Arc::new(s);

    // A dashboard polling while events stream in and segments seal (max_rows 700): the
    // count never exceeds what was produced and never goes down.
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (s, c, sent, stop) = (s.clone(), c.clone(), sent.clone(), stop.clone());
        let q = format!("SELECT count(*) FROM {table}");
        tokio::spawn(async move {
            let (mut last, mut queries) = (0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                let n = count(&c, &s, &q).await;
                let bound = sent.load(Ordering::Relaxed);
                assert!(n <= bound, "count {n} exceeds the {bound} events sent");
                assert!(n >= last, "count went down from {last} to {n}");
                last = n;
                queries += 1;
            }
            queries
        })
    };
    let (n, bad) = (8000u64, 90u64);
    let p = producer(&brokers);
    let bad_msgs = malformed(bad);
    for chunk in 0..10u64 {
        let mut msgs = events(chunk * n / 10, (chunk + 1) * n / 10);
        msgs.extend(
            bad_msgs[(chunk * bad / 10) as usize..((chunk + 1) * bad / 10) as usize]
                .iter()
                .cloned(),
        );
        sent.fetch_add(n / 10, Ordering::Relaxed);
        let topic = topic.clone();
        let p2 = &p;
        tokio::task::block_in_place(|| produce(p2, &topic, msgs));
    }
    wait_count(&c, &s, &format!("SELECT count(*) FROM {table}"), n).await;
    let q = format!("SELECT count(*) FROM \"{table}$quarantine\"");
    wait_count(&c, &s, &q, bad).await;
    stop.store(true, Ordering::Relaxed);
    let queries = watcher.await.unwrap();
    assert!(queries >= 5, "the concurrent reader ran {queries} queries");
    assert_eq!(
        count(
            &c,
            &s,
            &format!("SELECT count(DISTINCT event_id) FROM {table}")
        )
        .await,
        n
    );
    // Quarantine entries keep where they came from and why.
    let v = sql(
        &c,
        &s,
        &format!(
            "SELECT count(*) FROM \"{table}$quarantine\" WHERE topic = '{topic}' AND reason LIKE '%not valid JSON%' AND offset >= 0"
        ),
    )
    .await;
    assert_eq!(v["resultTable"]["rows"][0][0], json!(bad / 3), "{v}");

    // Everything seals (max_age 3 s): checkpoints reach the consumed offsets, lag drains.
    let status = wait_for(
        "checkpoints at the consumed offsets",
        Duration::from_secs(60),
        || {
            let (c, s, path) = (&c, &s, format!("/tables/{table}/ingestion"));
            async move {
                let st = get_json(c, s, &path).await;
                let parts = st["partitions"].as_array()?.clone();
                let done = parts.len() == PARTITIONS as usize
                    && parts.iter().all(|p| {
                        p["checkpoint_offset"] == p["consumed_offset"]
                            && p["lag"] == json!(0)
                            && p["mutable_rows"] == json!(0)
                    });
                done.then_some(st)
            }
        },
    )
    .await;
    let parts = status["partitions"].as_array().unwrap();
    let consumed: i64 = parts
        .iter()
        .map(|p| p["consumed_offset"].as_i64().unwrap())
        .sum();
    assert_eq!(consumed as u64, n + bad, "{status}");
    let quarantined: u64 = parts
        .iter()
        .map(|p| p["quarantined"].as_u64().unwrap())
        .sum();
    assert_eq!(quarantined, bad, "{status}");
    assert!(
        parts.iter().all(|p| p["last_seal_time"].is_string()),
        "{status}"
    );
    assert_eq!(status["state"], "consuming", "{status}");
    assert_eq!(status["broker_reachable"], true, "{status}");
    // Kafka's committed offsets follow the checkpoints (for lag monitoring only).
    let committed = tokio::task::block_in_place(|| {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let consumer: BaseConsumer = rdkafka::config::ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", format!("basalt-{table}"))
            .create()
            .unwrap();
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in 0..PARTITIONS {
            tpl.add_partition(&topic, p);
        }
        consumer
            .committed_offsets(tpl, Duration::from_secs(10))
            .unwrap()
            .elements()
            .iter()
            .map(|e| e.offset().to_raw().unwrap_or(-1))
            .sum::<i64>()
    });
    assert_eq!(committed as u64, n + bad, "committed offsets");
    let t = get_json(&c, &s, &format!("/tables/{table}")).await;
    assert_eq!(t["stats"]["rows"], json!(n), "every row sealed: {t}");
    assert!(t["stats"]["segments"].as_u64().unwrap() >= n / 700, "{t}");

    // The same figures as Prometheus metrics.
    let metrics = get_text(&c, &s, "/metrics").await;
    let total = |name: &str| -> u64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(name) && l.contains(&format!("table=\"{table}\"")))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as u64)
            .sum()
    };
    assert_eq!(total("basalt_ingestion_quarantined_total"), bad);
    assert_eq!(total("basalt_ingestion_events_total"), n + bad);
    assert_eq!(total("basalt_ingestion_lag{"), 0);
    assert_eq!(total("basalt_ingestion_broker_up"), 1);
    drop_table(&c, &s, &table).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_restart_and_an_empty_data_dir_resume_exactly_once_from_s3() {
    let Some(brokers) = service_env("BASALT_TEST_KAFKA", "realtime kill_9") else {
        return;
    };
    let Some(deep_store) = s3_prefix("realtime") else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let (topic, table) = (unique("events"), unique("rt"));
    create_topic(&brokers, &topic, PARTITIONS).await;
    let dir = tempfile::tempdir().unwrap();
    let c = reqwest::Client::new();
    let spec = table_spec(&table, &brokers, &topic, Some(&deep_store));
    let p = producer(&brokers);
    let total = format!("SELECT count(*) FROM {table}");
    let distinct = format!("SELECT count(DISTINCT event_id) FROM {table}");

    // Mid-stream: some rows sealed, some only in mutable segments, then kill -9.
    let s = Server::start(&dir.path().join("a"), Some(&allowing(&deep_store)));
    create(&c, &s, &spec).await;
    tokio::task::block_in_place(|| produce(&p, &topic, events(0, 3000)));
    wait_count(&c, &s, &total, 3000).await;
    s.kill();
    tokio::task::block_in_place(|| produce(&p, &topic, events(3000, 6000)));

    // Restart on the same data dir: resumes from the checkpoints, no loss, no duplicates.
    let s = Server::start(&dir.path().join("a"), Some(&allowing(&deep_store)));
    wait_count(&c, &s, &total, 6000).await;
    tokio::time::sleep(Duration::from_secs(4)).await; // seals happen meanwhile
    assert_eq!(count(&c, &s, &total).await, 6000);
    assert_eq!(count(&c, &s, &distinct).await, 6000);
    s.kill();

    // The segments and checkpoints are in the bucket.
    let (store, objects) = deep_store_objects(dir.path(), &deep_store).await;
    let segs = objects
        .iter()
        .filter(|p| p.starts_with(&format!("segments/{table}/")) && p.ends_with(".seg"))
        .count();
    assert!(segs >= 3, "{objects:?}");
    assert!(
        objects
            .iter()
            .any(|p| p.starts_with(&format!("_metastore/tables/{table}/"))),
        "{objects:?}"
    );

    // A server with an empty data dir, given the same spec, attaches the table from the deep
    // store and resumes from its checkpoints.
    tokio::task::block_in_place(|| produce(&p, &topic, events(6000, 7000)));
    let s = Server::start(&dir.path().join("empty"), Some(&allowing(&deep_store)));
    let v = create(&c, &s, &spec).await;
    assert_eq!(v["status"], "attached", "{v}");
    assert!(
        v["stats"]["rows"].as_u64().unwrap() > 0,
        "sealed rows found: {v}"
    );
    wait_count(&c, &s, &total, 7000).await;
    assert_eq!(count(&c, &s, &distinct).await, 7000);
    // The same name with another spec is refused, naming the deep store.
    let other = spec.replace("\"max_rows\":700", "\"max_rows\":701");
    s.kill();
    let s = Server::start(&dir.path().join("empty2"), Some(&allowing(&deep_store)));
    let r = c
        .post(s.url("/tables"))
        .header("content-type", "application/json")
        .body(other)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 409);
    let msg = r.text().await.unwrap();
    assert!(msg.contains("different spec"), "{msg}");
    // Dropping removes the table's objects from the bucket.
    create(&c, &s, &spec).await;
    drop_table(&c, &s, &table).await;
    let left: Vec<_> = store.list(None).try_collect().await.unwrap();
    assert!(only_tombstone(&left, &table), "{left:?}");
}

/// Whether `left` is only the metastore tombstone of `table` (a dropped table keeps its
/// latest metastore version, marked purged, and nothing else).
pub(crate) fn only_tombstone(left: &[object_store::ObjectMeta], table: &str) -> bool {
    left.len() == 1
        && left[0]
            .location
            .as_ref()
            .starts_with(&format!("_metastore/tables/{table}/"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_stopped_and_restarted_mid_stream() {
    let Some(brokers) = service_env("BASALT_TEST_KAFKA", "realtime broker_restart") else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let (topic, table, _dir, s, c) = topic_and_table(&brokers).await;
    let total = format!("SELECT count(*) FROM {table}");
    {
        let p = producer(&brokers);
        tokio::task::block_in_place(|| produce(&p, &topic, events(0, 2000)));
    }
    wait_count(&c, &s, &total, 2000).await;

    services_script(&["kafka-stop"]);
    let health = wait_for(
        "/health to report the broker",
        Duration::from_secs(60),
        || {
            let fut = get_json(&c, &s, "/health");
            async {
                let h = fut.await;
                (h["status"] == "degraded").then_some(h)
            }
        },
    )
    .await;
    assert_eq!(
        health["ingestion_problems"][0]["table"],
        json!(table),
        "{health}"
    );
    let st = get_json(&c, &s, &format!("/tables/{table}/ingestion")).await;
    assert_eq!(st["state"], "broker_unreachable", "{st}");
    assert_eq!(st["broker_reachable"], false, "{st}");
    // Queries keep working while the broker is away.
    assert_eq!(count(&c, &s, &total).await, 2000);

    services_script(&["kafka-start"]);
    {
        let p = producer(&brokers);
        tokio::task::block_in_place(|| produce(&p, &topic, events(2000, 4000)));
    }
    wait_count(&c, &s, &total, 4000).await;
    assert_eq!(
        count(
            &c,
            &s,
            &format!("SELECT count(DISTINCT event_id) FROM {table}")
        )
        .await,
        4000
    );
    wait_for("/health to recover", Duration::from_secs(60), || {
        let fut = get_json(&c, &s, "/health");
        async { (fut.await["status"] == "ok").then_some(()) }
    })
    .await;
    drop_table(&c, &s, &table).await;
}

/// `TEXT_MATCH` on a real-time table: events not yet sealed (tokenized as they are queried)
/// and sealed segments (with their text indexes) answer alike, and a new event matches as
/// soon as it is counted at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn text_match_sees_events_before_and_after_their_seal() {
    let Some(brokers) = service_env("BASALT_TEST_KAFKA", "realtime text_match") else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let (topic, table) = (unique("logs"), unique("rtlogs"));
    create_topic(&brokers, &topic, PARTITIONS).await;
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), None);
    let c = reqwest::Client::new();
    let spec = json!({
        "name": table,
        "time_column": "ts",
        "columns": [
            {"name": "ts", "type": "TIMESTAMP"},
            {"name": "message", "type": "STRING", "index": ["text"]}
        ],
        "source": {"kafka": {"brokers": brokers, "topic": topic, "format": "json",
            "start": "earliest", "properties": {"session.timeout.ms": "6000"}}},
        "segment": {"max_rows": 100, "max_age": "2s"}
    });
    create(&c, &s, &spec.to_string()).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let line = |i: u64| match i % 3 {
        0 => format!("disk full on node-{i}"),
        1 => format!("Timeout talking to node-{i}"),
        _ => format!("request ok node-{i}"),
    };
    let msgs: Vec<(i32, Vec<u8>)> = (0..600u64)
        .map(|i| {
            let body = json!({"ts": now + i as i64, "message": line(i)});
            (
                (i % PARTITIONS as u64) as i32,
                body.to_string().into_bytes(),
            )
        })
        .collect();
    let p = producer(&brokers);
    tokio::task::block_in_place(|| produce(&p, &topic, msgs));
    let total = format!("SELECT count(*) FROM {table}");
    wait_count(&c, &s, &total, 600).await;
    let disk = format!("SELECT count(*) FROM {table} WHERE TEXT_MATCH(message, '\"disk full\"')");
    let timeout = format!("SELECT count(*) FROM {table} WHERE TEXT_MATCH(message, 'time*')");
    assert_eq!(count(&c, &s, &disk).await, 200);
    assert_eq!(count(&c, &s, &timeout).await, 200);
    // A new event: matched in the same answer that first counts it.
    let needle = format!("SELECT count(*) FROM {table} WHERE TEXT_MATCH(message, 'zebra42')");
    assert_eq!(count(&c, &s, &needle).await, 0);
    let body = json!({"ts": now + 1000, "message": "a Zebra42 was seen"});
    tokio::task::block_in_place(|| produce(&p, &topic, vec![(0, body.to_string().into_bytes())]));
    let both = format!(
        "SELECT count(*), sum(CASE WHEN TEXT_MATCH(message, 'zebra42') THEN 1 ELSE 0 END) FROM {table}"
    );
    let start = std::time::Instant::now();
    loop {
        let v = sql(&c, &s, &both).await;
        let row = &v["resultTable"]["rows"][0];
        if row[0] == json!(601) {
            assert_eq!(row[1], json!(1), "{v}");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "{v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(count(&c, &s, &needle).await, 1);
    // Once everything is sealed (max_age 2 s) the indexes answer the same. The table's own
    // counts say so: a partition's status restarts from zero when the consumer group
    // rebalances (which a loaded machine's session timeouts cause), its rows still unsealed.
    wait_for("every row sealed", Duration::from_secs(60), || {
        let (c, s, path) = (&c, &s, format!("/tables/{table}"));
        async move {
            let t = get_json(c, s, &path).await;
            let done = t["stats"]["rows"] == json!(601) && t["stats"]["mutable_rows"] == json!(0);
            done.then_some(())
        }
    })
    .await;
    assert_eq!(count(&c, &s, &disk).await, 200);
    assert_eq!(count(&c, &s, &timeout).await, 200);
    assert_eq!(count(&c, &s, &needle).await, 1);
    drop_table(&c, &s, &table).await;
}
