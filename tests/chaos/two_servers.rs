//! Two servers pointed at the same deep store and the same real-time table: the second
//! attaches without deleting what the first staged, stands by while the first consumes, and
//! takes over from the checkpoints (with the first's published segments) when the first is
//! killed; the first, restarted, stands by in turn. Exactly N events throughout.

use std::time::Duration;

use object_store::ObjectStoreExt;

use crate::harness::{get_json, service_env, wait_for, Server};
use crate::kafka::{create_topic, produce_all, producer, unique};
use crate::realtime::{count, create, events, table_spec, wait_count, PARTITIONS, SERIAL};
use crate::s3::{allowing, deep_store_objects, s3_prefix};

async fn state_of(c: &reqwest::Client, s: &Server, table: &str) -> String {
    let st = get_json(c, s, &format!("/tables/{table}/ingestion")).await;
    st["state"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_servers_on_one_table_never_consume_it_together() {
    let Some(brokers) = service_env("BASALT_TEST_KAFKA", "chaos two servers") else {
        return;
    };
    let Some(deep_store) = s3_prefix("chaos-two") else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let (topic, table) = (unique("two"), unique("two"));
    create_topic(&brokers, &topic, PARTITIONS).await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "{}[ingest]\nconsumer_lease_secs = 4\n",
        allowing(&deep_store)
    );
    let spec = table_spec(&table, &brokers, &topic, Some(&deep_store));
    let total = format!("SELECT count(*) FROM {table}");
    let distinct = format!("SELECT count(DISTINCT event_id) FROM {table}");
    let c = reqwest::Client::new();
    let p = producer(&brokers);

    let a = Server::start(&dir.path().join("a"), Some(&config));
    create(&c, &a, &spec).await;
    let msgs = events(0, 3000);
    tokio::task::block_in_place(|| produce_all(&p, &topic, &msgs));
    wait_count(&c, &a, &total, 3000).await;

    // An upload of A's in flight (staged, not published yet): B must not delete it.
    let (store, objects) = deep_store_objects(dir.path(), &deep_store).await;
    let published = objects
        .iter()
        .find(|o| o.starts_with("segments/") && o.ends_with(".seg"))
        .expect("a sealed segment")
        .clone();
    let folder = published.rsplit_once('/').unwrap().0;
    let a_node = std::fs::read_to_string(dir.path().join("a/node_id")).unwrap();
    let in_flight = format!(
        "{folder}/{table}__0__999999__inflight__n{}.seg",
        a_node.trim()
    );
    let in_flight = object_store::path::Path::from(in_flight);
    let bytes = store
        .get(&object_store::path::Path::from(published.as_str()))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    store.put(&in_flight, bytes.into()).await.unwrap();

    // B attaches the same table: it leaves A's upload alone and stands by.
    let b = Server::start(&dir.path().join("b"), Some(&config));
    let r = create(&c, &b, &spec).await;
    assert_eq!(r["status"], "attached", "{r}");
    assert!(
        store.head(&in_flight).await.is_ok(),
        "B deleted A's staged upload"
    );
    store.delete(&in_flight).await.unwrap();
    wait_for("B to stand by", Duration::from_secs(20), || {
        let (c, b, table) = (c.clone(), &b, table.clone());
        async move { (state_of(&c, b, &table).await == "standby").then_some(()) }
    })
    .await;
    assert_eq!(state_of(&c, &a, &table).await, "consuming");
    let msgs = events(3000, 5000);
    tokio::task::block_in_place(|| produce_all(&p, &topic, &msgs));
    wait_count(&c, &a, &total, 5000).await;
    tokio::time::sleep(Duration::from_secs(3)).await; // seals publish meanwhile
    assert_eq!(
        state_of(&c, &b, &table).await,
        "standby",
        "B never consumed"
    );

    // A dies: B takes over once A's lease lapses, with what A published, from A's
    // checkpoints.
    a.kill();
    let msgs = events(5000, 6000);
    tokio::task::block_in_place(|| produce_all(&p, &topic, &msgs));
    wait_count(&c, &b, &total, 6000).await;
    assert_eq!(count(&c, &b, &distinct).await, 6000);
    let st = get_json(&c, &b, &format!("/tables/{table}/ingestion")).await;
    assert_eq!(st["state"], "consuming", "{st}");

    // A comes back: B holds the table, so A stands by.
    let a = Server::start(&dir.path().join("a"), Some(&config));
    wait_for("A to stand by", Duration::from_secs(20), || {
        let (c, a, table) = (c.clone(), &a, table.clone());
        async move { (state_of(&c, a, &table).await == "standby").then_some(()) }
    })
    .await;
    let msgs = events(6000, 7000);
    tokio::task::block_in_place(|| produce_all(&p, &topic, &msgs));
    wait_count(&c, &b, &total, 7000).await;
    assert_eq!(count(&c, &b, &distinct).await, 7000);
    assert_eq!(state_of(&c, &a, &table).await, "standby");
    drop(a);
    crate::harness::drop_table(&c, &b, &table).await;
}
