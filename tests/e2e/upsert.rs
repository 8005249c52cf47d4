//! Upsert tables through the real binary: a PARTIAL upsert table consuming a keyed Kafka
//! topic (tansu) with its deep store on S3 (SeaweedFS), killed with -9 mid-stream and
//! restarted — INCREMENT sums must not count a replayed event twice — and batch ingests
//! into an upsert table without a source over HTTP, through a restart.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{get_json, service_env, sql, Server};
use crate::kafka::{create_topic, produce_all, producer, unique};
use crate::realtime::{create, SERIAL};
use crate::s3::{allowing, deep_store_objects, s3_prefix};

pub(crate) const PARTITIONS: i32 = 4;
const KEYS: u64 = 400;

pub(crate) fn spec(table: &str, source: Option<Value>, deep_store: Option<&str>) -> String {
    let mut v = json!({
        "name": table, "time_column": "ts",
        "columns": [
            {"name":"order_id","type":"STRING"},
            {"name":"ts","type":"TIMESTAMP"},
            {"name":"updated_at","type":"LONG"},
            {"name":"is_deleted","type":"BOOLEAN"},
            {"name":"amount","type":"LONG"},
            {"name":"status","type":"STRING","index":["inverted"]},
            {"name":"max_seen","type":"LONG"}],
        "primary_key": ["order_id"],
        "upsert": {"mode":"PARTIAL","comparison_column":"updated_at","delete_column":"is_deleted",
                   "partial_strategies":{"amount":"INCREMENT","status":"OVERWRITE","max_seen":"MAX"},
                   "metadata_ttl":"7d"},
        "segment": {"max_rows": 300, "max_age": "2s"}
    });
    if let Some(s) = source {
        v["source"] = s;
    }
    if let Some(d) = deep_store {
        v["deep_store"] = d.into();
    }
    v.to_string()
}

/// Event `i`: keys cycle through a permutation; every 11th event comes late (its
/// comparison value is below what its key already has), every 37th deletes its key.
pub(crate) struct Event {
    pub key: u64,
    updated_at: i64,
    delete: bool,
    amount: i64,
    status: String,
    max_seen: i64,
}

pub(crate) fn event(i: u64) -> Event {
    Event {
        key: (i * 7919) % KEYS,
        updated_at: if i % 11 == 5 && i > KEYS * 2 {
            (i - KEYS * 2) as i64
        } else {
            i as i64
        },
        delete: i % 37 == 36,
        amount: (i % 10 + 1) as i64,
        status: format!("s{}", i % 5),
        max_seen: ((i * 31) % 1000) as i64,
    }
}

pub(crate) fn message(e: &Event) -> Vec<u8> {
    json!({"order_id": format!("o{:04}", e.key), "ts": 1_790_000_000_000i64 + e.updated_at,
           "updated_at": e.updated_at, "is_deleted": e.delete, "amount": e.amount,
           "status": e.status, "max_seen": e.max_seen})
    .to_string()
    .into_bytes()
}

/// A key's current row: amount, status, max_seen.
type Row = (i64, String, i64);

/// NDJSON of events `from..to`.
fn ndjson(from: u64, to: u64) -> String {
    let mut body = String::new();
    for i in from..to {
        body.push_str(std::str::from_utf8(&message(&event(i))).unwrap());
        body.push('\n');
    }
    body
}

/// key → (comparison value, current row; `None` when deleted).
#[derive(Default)]
pub(crate) struct Model(BTreeMap<u64, (i64, Option<Row>)>);

impl Model {
    pub(crate) fn apply(&mut self, e: &Event) {
        let cur = self.0.get(&e.key);
        if cur.is_some_and(|(c, _)| e.updated_at < *c) {
            return;
        }
        let row = match (e.delete, cur.and_then(|(_, r)| r.as_ref())) {
            (true, _) => None,
            (false, Some((a, _, m))) => {
                Some((a + e.amount, e.status.clone(), (*m).max(e.max_seen)))
            }
            (false, None) => Some((e.amount, e.status.clone(), e.max_seen)),
        };
        self.0.insert(e.key, (e.updated_at, row));
    }

    /// What [`summary`] answers.
    pub(crate) fn summary(&self) -> Value {
        let live: Vec<_> = self.0.values().filter_map(|(_, r)| r.as_ref()).collect();
        let s2 = live.iter().filter(|r| r.1 == "s2").count();
        json!([
            live.len(),
            live.len(),
            live.iter().map(|r| r.0).sum::<i64>(),
            live.iter().map(|r| r.2).sum::<i64>(),
            s2
        ])
    }
}

pub(crate) const SUMMARY: &str =
    "SELECT count(*), count(DISTINCT order_id), sum(amount), sum(max_seen), \
     sum(CASE WHEN status = 's2' THEN 1 ELSE 0 END) FROM {t}";

async fn summary(c: &reqwest::Client, s: &Server, table: &str) -> Value {
    let v = sql(c, s, &SUMMARY.replace("{t}", table)).await;
    assert_eq!(v["exceptions"], json!([]), "{v}");
    v["resultTable"]["rows"][0].clone()
}

/// Waits until the table answers what the model says; a key shown twice fails at once.
async fn wait_model(c: &reqwest::Client, s: &Server, table: &str, model: &Model) {
    let want = model.summary();
    let start = std::time::Instant::now();
    loop {
        let got = summary(c, s, table).await;
        assert_eq!(got[0], got[1], "a key shows twice: {got}");
        if got == want {
            return;
        }
        if start.elapsed() > Duration::from_secs(90) {
            let st = get_json(c, s, &format!("/tables/{table}/ingestion")).await;
            panic!("after 90 s: got {got}, want {want}; ingestion: {st}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kafka_upsert_table_survives_kill_9_with_one_current_row_per_key() {
    let Some(brokers) = service_env("BASALT_TEST_KAFKA", "upsert kill_9") else {
        return;
    };
    let Some(deep_store) = s3_prefix("upsert") else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let (topic, table) = (unique("orders"), unique("orders"));
    create_topic(&brokers, &topic, PARTITIONS).await;
    let dir = tempfile::tempdir().unwrap();
    let c = reqwest::Client::new();
    let source = json!({"kafka": {"brokers": brokers, "topic": topic, "format": "json",
        "start": "earliest", "properties": {"session.timeout.ms": "6000"}}});
    let spec = spec(&table, Some(source), Some(&deep_store));
    let p = producer(&brokers);
    let mut model = Model::default();
    // The topic is keyed by the primary key: a key's events all go to one partition.
    let send = |from: u64, to: u64, model: &mut Model| {
        let msgs: Vec<(i32, Vec<u8>)> = (from..to)
            .map(|i| {
                let e = event(i);
                model.apply(&e);
                ((e.key % PARTITIONS as u64) as i32, message(&e))
            })
            .collect();
        tokio::task::block_in_place(|| produce_all(&p, &topic, &msgs));
    };

    // Mid-stream: some rows sealed (snapshots on S3), the rest only in mutable segments.
    let s = Server::start(&dir.path().join("a"), Some(&allowing(&deep_store)));
    create(&c, &s, &spec).await;
    send(0, 2000, &mut model);
    wait_model(&c, &s, &table, &model).await;
    s.kill();
    send(2000, 4000, &mut model);

    // Restart: keys restored from the last snapshot, the rest replayed from the checkpoint;
    // a replayed INCREMENT counted twice or a lost event shows in the sums.
    let s = Server::start(&dir.path().join("a"), Some(&allowing(&deep_store)));
    wait_model(&c, &s, &table, &model).await;
    tokio::time::sleep(Duration::from_secs(3)).await; // seals happen meanwhile
    assert_eq!(summary(&c, &s, &table).await, model.summary());
    let st = get_json(&c, &s, &format!("/tables/{table}/ingestion")).await;
    let parts = st["partitions"].as_array().unwrap();
    let total = |field: &str| -> u64 {
        parts
            .iter()
            .map(|p| p["keyed"][field].as_u64().unwrap())
            .sum()
    };
    assert_eq!(total("key_conflicts"), 0, "{st}");
    assert!(total("out_of_order") > 0 && total("deletes") > 0, "{st}");
    // A row of one key, exactly.
    let key = event(3999).key;
    let (_, row) = &model.0[&key];
    let v = sql(
        &c,
        &s,
        &format!("SELECT amount, status, max_seen FROM {table} WHERE order_id = 'o{key:04}'"),
    )
    .await;
    let want = match row {
        Some((a, st, m)) => json!([[a, st, m]]),
        None => json!([]),
    };
    assert_eq!(v["resultTable"]["rows"], want, "{v}");
    s.kill();

    // Kill -9 again right after more events, then a server with an empty data dir attaches
    // the table from S3 and restores the same keys.
    let (_, objects) = deep_store_objects(dir.path(), &deep_store).await;
    assert!(
        objects
            .iter()
            .any(|o| o.starts_with(&format!("keyed/{table}/"))),
        "keyed snapshots on S3: {objects:?}"
    );
    send(4000, 5000, &mut model);
    let s = Server::start(&dir.path().join("b"), Some(&allowing(&deep_store)));
    let v = create(&c, &s, &spec).await;
    assert_eq!(v["status"], "attached", "{v}");
    wait_model(&c, &s, &table, &model).await;
    crate::harness::drop_table(&c, &s, &table).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_ingest_into_an_upsert_table_obeys_the_same_rules() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let c = reqwest::Client::new();
    let s = Server::start(&data, None);
    create(&c, &s, &spec("orders", None, None)).await;
    let mut model = Model::default();
    let ingest = |from: u64, to: u64, bad: bool| {
        let mut body = ndjson(from, to);
        if bad {
            body.push_str(r#"{"order_id":"o0001","ts":1,"updated_at":"late","is_deleted":false}"#);
        }
        c.post(s.url("/tables/orders/ingest"))
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
    };
    // Two requests, each over several segments (max_rows 300).
    for (from, to) in [(0, 1500), (1500, 2600)] {
        let r = ingest(from, to, false).await.unwrap();
        assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
        (from..to).for_each(|i| model.apply(&event(i)));
    }
    wait_model(&c, &s, "orders", &model).await;
    // A bad last row: 400 naming it, and none of the request's 900 updates show.
    let r = ingest(2600, 3500, true).await.unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let msg = r.text().await.unwrap();
    assert!(msg.contains("updated_at"), "{msg}");
    assert_eq!(summary(&c, &s, "orders").await, model.summary());
    drop(s);

    // After a restart the same rows are current, and later updates merge with them.
    let s = Server::start(&data, None);
    assert_eq!(summary(&c, &s, "orders").await, model.summary());
    (2600..3500).for_each(|i| model.apply(&event(i)));
    let r = c
        .post(s.url("/tables/orders/ingest"))
        .header("content-type", "application/x-ndjson")
        .body(ndjson(2600, 3500))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(summary(&c, &s, "orders").await, model.summary());

    // A keyed table with a stream source takes rows only from its stream.
    let source = json!({"generator": {"partitions": 1, "events_per_second": 1}});
    create(&c, &s, &spec("streamed", Some(source), None)).await;
    let r = c
        .post(s.url("/tables/streamed/ingest"))
        .header("content-type", "application/x-ndjson")
        .body(String::from_utf8(message(&event(1))).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 409);
    let msg = r.text().await.unwrap();
    assert!(msg.contains("stream"), "{msg}");
}
