//! The deep store goes away: a private SeaweedFS (its own ports and directory, so the other
//! tests' S3 stays up) is stopped for 20 s while seals are pending. Queries keep answering,
//! seals retry, and once it is back the table holds exactly the events produced. A server
//! started while the store is down starts, reports the table unavailable, and recovers
//! alone when the store comes back.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::harness::{get_json, service_env, wait_for, Server};
use crate::kafka::{create_topic, produce_all, producer, unique};
use crate::realtime::{count, create, events, table_spec, wait_count, PARTITIONS, SERIAL};

/// A SeaweedFS of the test's own (`weed mini` on ports from `base`).
struct PrivateS3 {
    dir: std::path::PathBuf,
    base: u16,
    child: Option<Child>,
}

impl PrivateS3 {
    fn s3_port(&self) -> u16 {
        self.base + 333
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port())
    }

    fn start(&mut self) {
        let b = self.base;
        let log = std::fs::File::create(self.dir.join("weed.log")).unwrap();
        let child = Command::new("weed")
            .arg("mini")
            .arg(format!("-dir={}", self.dir.display()))
            .args([
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                "-master.telemetry=false",
                "-webdav=false",
                "-admin.ui=false",
                "-bucket=basalt",
            ])
            .arg(format!("-master.port={}", b + 1))
            .arg(format!("-master.port.grpc={}", b + 11))
            .arg(format!("-volume.port={}", b + 2))
            .arg(format!("-volume.port.grpc={}", b + 12))
            .arg(format!("-filer.port={}", b + 3))
            .arg(format!("-filer.port.grpc={}", b + 13))
            .arg(format!("-s3.port={}", self.s3_port()))
            .arg(format!("-s3.port.grpc={}", b + 14))
            .arg(format!("-s3.port.iceberg={}", b + 5))
            .arg(format!("-admin.port={}", b + 6))
            .arg(format!("-admin.port.grpc={}", b + 16))
            .current_dir(&self.dir)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start weed (installed by tests/services/services.sh)");
        self.child = Some(child);
        // Ready when a signed request finds the bucket (`weed mini` creates it after its
        // S3 API answers).
        let start = Instant::now();
        let user = format!(
            "{}:{}",
            std::env::var("AWS_ACCESS_KEY_ID").unwrap_or_default(),
            std::env::var("AWS_SECRET_ACCESS_KEY").unwrap_or_default()
        );
        loop {
            let ok = std::process::Command::new("curl")
                .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
                .args(["--aws-sigv4", "aws:amz:us-east-1:s3", "--user", &user])
                .arg(format!("{}/basalt", self.endpoint()))
                .output()
                .is_ok_and(|o| o.stdout == b"200");
            if ok {
                return;
            }
            let log = std::fs::read_to_string(self.dir.join("weed.log")).unwrap_or_default();
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            assert!(
                exited.is_none() && start.elapsed() < Duration::from_secs(60),
                "private SeaweedFS did not start ({exited:?}): {log}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateS3 {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_s3_outage_stalls_seals_but_loses_nothing() {
    let Some(brokers) = service_env("BASALT_TEST_KAFKA", "chaos s3 outage") else {
        return;
    };
    if service_env("BASALT_TEST_S3", "chaos s3 outage").is_none() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut s3 = PrivateS3 {
        dir: dir.path().join("weed"),
        base: 29000,
        child: None,
    };
    std::fs::create_dir_all(&s3.dir).unwrap();
    s3.start();
    let endpoint = s3.endpoint();
    let env = [
        ("AWS_ENDPOINT", endpoint.as_str()),
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
    ];
    // A short consumer lease: the last step's new data dir takes the table over quickly.
    let config =
        "[server]\ndeep_store = \"s3://basalt/outage\"\n[ingest]\nconsumer_lease_secs = 3\n";
    let (topic, table) = (unique("outage"), unique("outage"));
    create_topic(&brokers, &topic, PARTITIONS).await;
    let mut spec: serde_json::Value =
        serde_json::from_str(&table_spec(&table, &brokers, &topic, None)).unwrap();
    spec["segment"] = serde_json::json!({"max_rows": 500, "max_age": "1s"});
    let total = format!("SELECT count(*) FROM {table}");
    let distinct = format!("SELECT count(DISTINCT event_id) FROM {table}");
    let c = reqwest::Client::new();
    let p = producer(&brokers);
    let data = dir.path().join("data");
    let s = Server::start_with(&data, Some(config), &env);
    create(&c, &s, &spec.to_string()).await;
    let msgs = events(0, 2000);
    tokio::task::block_in_place(|| produce_all(&p, &topic, &msgs));
    wait_count(&c, &s, &total, 2000).await;

    // The store goes down with more events arriving: they are queryable at once, their
    // seals fail and retry, and queries keep answering throughout.
    s3.stop();
    let msgs = events(2000, 5000);
    tokio::task::block_in_place(|| produce_all(&p, &topic, &msgs));
    let down = Instant::now();
    let mut answered = 0;
    while down.elapsed() < Duration::from_secs(20) {
        let n = count(&c, &s, &total).await;
        assert!(n <= 5000, "{n} > 5000 during the outage");
        answered += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        answered > 40,
        "queries answered during the outage: {answered}"
    );
    assert_eq!(count(&c, &s, &total).await, 5000, "rows stay queryable");
    let st = get_json(&c, &s, &format!("/tables/{table}/ingestion")).await;
    assert!(
        st["seals_pending"].as_u64().unwrap_or(0) > 0 || st["error"].is_string(),
        "seals were waiting for the store: {st}"
    );
    s3.start();
    // Seals land; after a restart (only what was published survives) exactly 5000.
    wait_for(
        "the pending seals to publish",
        Duration::from_secs(90),
        || {
            let (c, s, table) = (c.clone(), &s, table.clone());
            async move {
                let st = get_json(&c, s, &format!("/tables/{table}/ingestion")).await;
                let done = st["seals_pending"].as_u64() == Some(0)
                    && st["partitions"]
                        .as_array()
                        .is_some_and(|ps| ps.iter().all(|p| p["mutable_rows"].as_u64() == Some(0)));
                done.then_some(())
            }
        },
    )
    .await;
    s.kill();
    let s = Server::start_with(&data, Some(config), &env);
    wait_count(&c, &s, &total, 5000).await;
    assert_eq!(count(&c, &s, &distinct).await, 5000);
    s.kill();

    // Started while the store is down: the server comes up, says the table is unavailable,
    // and loads it alone once the store answers.
    s3.stop();
    let s = Server::start_with(&data, Some(config), &env);
    let h = wait_for(
        "health to report the table",
        Duration::from_secs(30),
        || {
            let (c, s) = (c.clone(), &s);
            async move {
                let h = get_json(&c, s, "/health").await;
                (h["status"] == "degraded").then_some(h)
            }
        },
    )
    .await;
    let unavailable = h["tables_unavailable"].to_string();
    assert!(unavailable.contains(&table), "{h}");
    let v = crate::harness::sql(&c, &s, &total).await;
    assert_eq!(v["exceptions"][0]["errorCode"], 235, "{v}");
    let r = c
        .get(s.url(&format!("/tables/{table}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    s3.start();
    healthy(&c, &s).await;
    wait_count(&c, &s, &total, 5000).await;
    // And still consuming: more events arrive.
    let msgs = events(5000, 6000);
    tokio::task::block_in_place(|| produce_all(&p, &topic, &msgs));
    wait_count(&c, &s, &total, 6000).await;
    assert_eq!(count(&c, &s, &distinct).await, 6000);

    // An empty data dir while the store is down: nothing is known yet, the server starts
    // degraded and finds the table once the store answers.
    s.kill();
    s3.stop();
    let s = Server::start_with(&dir.path().join("empty"), Some(config), &env);
    let h = get_json(&c, &s, "/health").await;
    assert_eq!(h["status"], "degraded", "{h}");
    assert!(h["deep_store_error"].is_string(), "{h}");
    s3.start();
    healthy(&c, &s).await;
    wait_count(&c, &s, &total, 6000).await;
    s.kill();
}

/// Waits for the background recovery to load every table (health `ok`).
async fn healthy(c: &reqwest::Client, s: &Server) {
    wait_for(
        "the tables to load",
        Duration::from_secs(60),
        || async move {
            let h = get_json(c, s, "/health").await;
            (h["status"] == "ok").then_some(())
        },
    )
    .await;
}
