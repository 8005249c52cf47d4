//! The cluster roles through the real binary: three `basalt server` processes and a
//! `basalt broker` on 127.0.0.1, sharing a deep store on SeaweedFS (S3). Answers equal
//! `standalone`'s on the same data (the sqllogictest files and a differential query set);
//! `kill -9` of a server keeps answers complete (its segments are retried on a replica); a
//! fourth server joining and one leaving gracefully rebalance without a wrong answer; losing
//! every replica of some segments gives a result flagged partial that names them (an error
//! for PostgreSQL clients unless they opt in); a restarted broker routes again from gossip
//! and the metastore. Real-time tables (tansu): partitions spread over the servers and
//! handed over on `kill -9` and on a join without counting an event twice; an upsert table's
//! partitions stay with their key maps. Servers refuse fragments that are not Basalt's shape.
//!
//! The tests run one cluster at a time ([`ONE_CLUSTER`]). Needs `BASALT_TEST_S3` (and
//! `BASALT_TEST_KAFKA`; `services.sh env`); without them the tests say SKIPPED and pass,
//! unless `BASALT_REQUIRE_SERVICES` is set (as in `.ci/run`).

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::{
    create_table, ingest_ndjson, spawn_until_listening, sql, sql_at, wait_for, Server,
};

const SPEC: &str = include_str!("../../ingestion/src/gen_events_spec.json");
const TOKEN: &str = "e2e-cluster-token-0123456789";

/// One cluster at a time: several clusters' processes on two cores starve each other's
/// gossip and loading past the timeouts a test asserts on.
static ONE_CLUSTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A free port on 127.0.0.1 (TCP and UDP both free at the time of asking).
fn free_port() -> u16 {
    loop {
        let t = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = t.local_addr().unwrap().port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

struct Node {
    child: Child,
    cmd: Vec<String>,
}

impl Node {
    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the process to leave (at most `within`).
    fn terminate(&mut self, within: Duration) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let start = Instant::now();
        while start.elapsed() < within {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("server did not leave within {within:?}");
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Servers and a broker on one deep store.
pub struct TestCluster {
    dir: tempfile::TempDir,
    deep_store: String,
    seed: String,
    servers: BTreeMap<String, Node>,
    pub broker: Option<Server>,
    broker_http: u16,
    broker_pg: u16,
}

impl TestCluster {
    pub fn new(deep_store: &str) -> TestCluster {
        TestCluster {
            dir: tempfile::tempdir().unwrap(),
            deep_store: deep_store.to_string(),
            seed: format!("127.0.0.1:{}", free_port()),
            servers: BTreeMap::new(),
            broker: None,
            broker_http: free_port(),
            broker_pg: free_port(),
        }
    }

    /// A broker and servers s1, s2, s3.
    pub fn three_servers(deep_store: &str) -> TestCluster {
        let mut c = TestCluster::new(deep_store);
        c.start_broker();
        for s in ["s1", "s2", "s3"] {
            c.start_server(s);
        }
        c
    }

    fn command(&self, args: &[String]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_basalt"));
        cmd.args(args).env("BASALT_CLUSTER_TOKEN", TOKEN).env(
            "RUST_LOG",
            std::env::var("BASALT_TEST_CLUSTER_LOG").unwrap_or_else(|_| "warn".into()),
        );
        cmd
    }

    pub fn start_server(&mut self, id: &str) {
        let data = self.dir.path().join(id);
        let args: Vec<String> = vec![
            "server".into(),
            "--node-id".into(),
            id.into(),
            "--data-dir".into(),
            data.display().to_string(),
            "--deep-store".into(),
            self.deep_store.clone(),
            "--flight-addr".into(),
            format!("127.0.0.1:{}", free_port()),
            "--gossip-addr".into(),
            format!("127.0.0.1:{}", free_port()),
            "--seeds".into(),
            self.seed.clone(),
            "--http-addr".into(),
            format!("127.0.0.1:{}", free_port()),
        ];
        let (child, _line) = spawn_until_listening(self.command(&args));
        self.servers
            .insert(id.to_string(), Node { child, cmd: args });
    }

    pub fn start_broker(&mut self) {
        let args: Vec<String> = vec![
            "broker".into(),
            "--node-id".into(),
            "b1".into(),
            "--data-dir".into(),
            self.dir.path().join("b1").display().to_string(),
            "--deep-store".into(),
            self.deep_store.clone(),
            "--http-addr".into(),
            format!("127.0.0.1:{}", self.broker_http),
            "--pg-addr".into(),
            format!("127.0.0.1:{}", self.broker_pg),
            "--gossip-addr".into(),
            self.seed.clone(),
            "--seeds".into(),
            self.seed.clone(),
        ];
        let (child, line) = spawn_until_listening(self.command(&args));
        self.broker = Some(Server::from_listening(child, &line));
    }

    pub fn broker(&self) -> &Server {
        self.broker.as_ref().expect("broker started")
    }

    pub fn kill9(&mut self, id: &str) {
        if let Some(mut n) = self.servers.remove(id) {
            n.kill9();
        }
    }

    pub fn stop(&mut self, id: &str) {
        if let Some(mut n) = self.servers.remove(id) {
            n.terminate(Duration::from_secs(90));
        }
    }

    /// Restarts a server killed earlier, on its data dir and addresses.
    #[allow(dead_code)]
    pub fn restart(&mut self, id: &str, cmd: Vec<String>) {
        let (child, _) = spawn_until_listening(self.command(&cmd));
        self.servers.insert(id.to_string(), Node { child, cmd });
    }

    /// Each server's `/health`.
    async fn health(&self, client: &reqwest::Client) -> BTreeMap<String, Value> {
        let mut out = BTreeMap::new();
        for (id, n) in &self.servers {
            let http = n.cmd[n.cmd.iter().position(|a| a == "--http-addr").unwrap() + 1].clone();
            let v: Value = match client.get(format!("http://{http}/health")).send().await {
                Ok(r) => r.json().await.unwrap_or(Value::Null),
                Err(_) => Value::Null,
            };
            out.insert(id.clone(), v);
        }
        out
    }

    /// Plan fragments the servers have received (`basalt_server_fragments_total`).
    pub async fn fragments(&self, client: &reqwest::Client) -> u64 {
        let mut total = 0;
        for n in self.servers.values() {
            let http = n.cmd[n.cmd.iter().position(|a| a == "--http-addr").unwrap() + 1].clone();
            let Ok(r) = client.get(format!("http://{http}/metrics")).send().await else {
                continue;
            };
            let text = r.text().await.unwrap_or_default();
            total += text
                .lines()
                .find_map(|l| l.strip_prefix("basalt_server_fragments_total "))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0) as u64;
        }
        total
    }

    /// Segments per server.
    pub async fn loaded(&self, client: &reqwest::Client) -> BTreeMap<String, u64> {
        self.health(client)
            .await
            .into_iter()
            .map(|(id, v)| (id, v["segments"].as_u64().unwrap_or(0)))
            .collect()
    }

    /// The stream partitions of `table` each server consumes (servers consuming none, or
    /// not answering, left out).
    pub async fn consuming(
        &self,
        client: &reqwest::Client,
        table: &str,
    ) -> BTreeMap<String, Vec<u64>> {
        self.health(client)
            .await
            .into_iter()
            .map(|(id, v)| {
                let parts = v["consuming"][table]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_u64)
                    .collect::<Vec<u64>>();
                (id, parts)
            })
            .filter(|(_, parts)| !parts.is_empty())
            .collect()
    }
}

/// Segments per server once `total` are placed and nothing moved for 1.5 s (a server that
/// saw fewer peers at first hands its extra segments over).
async fn settled(c: &TestCluster, client: &reqwest::Client, total: u64) -> BTreeMap<String, u64> {
    let start = Instant::now();
    let mut last = BTreeMap::new();
    loop {
        let now = c.loaded(client).await;
        if now == last && now.values().sum::<u64>() == total {
            return now;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "placement never settled: {now:?}"
        );
        last = now;
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
}

/// A per-test prefix of the S3 deep store, or `None` (skipped).
fn deep_store(test: &str) -> Option<String> {
    crate::s3::s3_prefix(test)
}

fn events_spec(replication: u32, max_rows: u64) -> String {
    let mut v: Value = serde_json::from_str(SPEC).unwrap();
    v["replication"] = replication.into();
    v["segment"] = json!({ "max_rows": max_rows });
    v.to_string()
}

/// Loads `rows` generated events (the same for the same seed) into `events` on `s`.
async fn load_events(client: &reqwest::Client, s: &Server, rows: u64, dir: &std::path::Path) {
    load_events_into(client, s, "events", rows, dir).await
}

/// Loads `rows` generated events (the same for the same seed) into `table` on `s`.
async fn load_events_into(
    client: &reqwest::Client,
    s: &Server,
    table: &str,
    rows: u64,
    dir: &std::path::Path,
) {
    let file = dir.join(format!("events-{rows}.ndjson"));
    if !file.exists() {
        let out = Command::new(env!("CARGO_BIN_EXE_basalt"))
            .args(["gen-events", "--rows", &rows.to_string(), "--seed", "7"])
            .arg("--out")
            .arg(&file)
            .output()
            .unwrap();
        crate::harness::succeeded(&out);
    }
    ingest_ndjson(client, s, table, std::fs::read(&file).unwrap()).await;
}

async fn count(client: &reqwest::Client, s: &Server) -> Value {
    sql(client, s, "SELECT count(*) FROM events").await
}

/// Whether two cells are equal, floats within a relative `tol`.
fn close(a: &Value, b: &Value, tol: f64) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            (x - y).abs() <= tol * x.abs().max(y.abs()).max(1.0)
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| close(a, b, tol))
        }
        _ => a == b,
    }
}

/// The differential set: the macro benchmark's dashboard queries at fixed times, plus
/// shapes the scatter must cut differently (no aggregate, DISTINCT, HAVING, a join, a
/// subquery). `(sql, tolerance)`: merged partial sums may differ in the last bits, merged
/// t-digests by a little.
fn queries(newest: &str) -> Vec<(String, f64)> {
    let at = |ago: &str| format!("TIMESTAMP '{newest}' - INTERVAL '{ago}'");
    let q = |s: String, tol: f64| (s, tol);
    vec![
        q("SELECT count(*) FROM events".into(), 0.0),
        q(format!("SELECT count(*) FROM events WHERE ts >= {}", at("5 minutes")), 0.0),
        q(format!("SELECT event_type, count(*) AS n FROM events WHERE ts >= {} GROUP BY event_type ORDER BY n DESC, event_type LIMIT 10", at("1 hour")), 0.0),
        q(format!("SELECT date_trunc('minute', ts) AS m, count(*) AS n, sum(revenue) AS rev FROM events WHERE ts >= {} GROUP BY 1 ORDER BY 1", at("1 hour")), 1e-9),
        q("SELECT approx_percentile_cont(latency_ms, 0.95) FROM events WHERE country = 'AB' AND device = 'mobile'".into(), 0.05),
        q("SELECT country, approx_distinct(user_id) AS users FROM events GROUP BY country ORDER BY users DESC, country LIMIT 10".into(), 0.0),
        q("SELECT ts, event_type, url FROM events WHERE user_id = 'u12345' ORDER BY ts DESC, event_type, url LIMIT 20".into(), 0.0),
        q("SELECT url, count(*) AS n FROM events WHERE event_type = 'page_view' AND country = 'AC' GROUP BY url ORDER BY n DESC, url LIMIT 10".into(), 0.0),
        q("SELECT count(*) FROM events WHERE url LIKE '%/p/77%'".into(), 0.0),
        q("SELECT device, os, count(*) AS n, avg(latency_ms) AS lat FROM events GROUP BY device, os ORDER BY n DESC, device, os".into(), 1e-9),
        q("SELECT user_id, count(*) AS n FROM events GROUP BY user_id ORDER BY n DESC, user_id LIMIT 10".into(), 0.0),
        q("SELECT count(*), sum(revenue) FROM events WHERE country = 'BD' AND device = 'tv' AND event_type = 'purchase'".into(), 1e-9),
        q("SELECT min(ts), max(ts), min(latency_ms), max(latency_ms), sum(CASE WHEN is_bot THEN 1 ELSE 0 END) FROM events".into(), 0.0),
        q("SELECT count(DISTINCT country), count(DISTINCT device) FROM events".into(), 0.0),
        q("SELECT country, avg(revenue) AS r FROM events GROUP BY country HAVING count(*) > 1000 ORDER BY r DESC, country LIMIT 5".into(), 1e-9),
        q("SELECT event_id, latency_ms FROM events WHERE latency_ms > 900 ORDER BY latency_ms DESC, event_id LIMIT 7".into(), 0.0),
        q("SELECT e.country, count(*) FROM events e JOIN (SELECT country FROM events GROUP BY country ORDER BY count(*) DESC LIMIT 3) t3 ON e.country = t3.country GROUP BY e.country ORDER BY 1".into(), 0.0),
        q("SELECT count(*) FROM events WHERE user_id IN (SELECT user_id FROM events WHERE event_type = 'purchase' AND revenue > 400)".into(), 0.0),
        q("SELECT upper(device) AS d, length(url) AS l FROM events WHERE country = 'AE' ORDER BY ts, event_id LIMIT 5".into(), 0.0),
    ]
}

async fn rows(client: &reqwest::Client, s: &Server, q: &str) -> Value {
    let v = sql(client, s, q).await;
    assert_eq!(v["exceptions"], json!([]), "{q}: {v}");
    assert_ne!(v["partialResult"], json!(true), "{q}: {v}");
    v["resultTable"]["rows"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_answers_equal_standalone() {
    let Some(url) = deep_store("cluster-diff") else {
        return;
    };
    let _one = ONE_CLUSTER.lock().await;
    let client = reqwest::Client::new();
    let c = TestCluster::three_servers(&url);
    let alone_dir = tempfile::tempdir().unwrap();
    let alone = Server::start(&alone_dir.path().join("data"), None);
    create_table(&client, c.broker(), &events_spec(2, 20_000)).await;
    create_table(&client, &alone, &events_spec(1, 20_000)).await;
    load_events(&client, c.broker(), 200_000, alone_dir.path()).await;
    load_events(&client, &alone, 200_000, alone_dir.path()).await;
    // Every segment on two servers.
    wait_for("segments placed twice", Duration::from_secs(60), || async {
        let total: u64 = c.loaded(&client).await.values().sum();
        (total == 20).then_some(())
    })
    .await;
    let newest = crate::harness::scalar(&client, &alone, "SELECT max(ts) FROM events").await;
    for (q, tol) in queries(newest.as_str().expect("max(ts)")) {
        let want = rows(&client, &alone, &q).await;
        let got = rows(&client, c.broker(), &q).await;
        assert!(
            close(&want, &got, tol),
            "{q}\nstandalone: {want}\ncluster:    {got}"
        );
    }
    broadcast_joins_equal_standalone(&client, &c, &alone).await;
    let v = sql(&client, c.broker(), "SELECT count(*) FROM events").await;
    assert_eq!(v["numServersQueried"], json!(3), "{v}");
    assert_eq!(v["numServersResponded"], json!(3), "{v}");
    assert_eq!(v["partialResult"], json!(false), "{v}");
    assert_eq!(v["numDocsScanned"], json!(200_000), "{v}");
    // The servers' answers are gathered into one partition where the plan would coalesce
    // them anyway (no task per partition on the broker).
    let plan = sql(&client, c.broker(), "EXPLAIN SELECT count(*) FROM events").await;
    assert!(plan.to_string().contains("ScatterExec"), "{plan}");
    assert!(
        !plan.to_string().contains("CoalescePartitionsExec"),
        "{plan}"
    );
    // The same events in one segment: every answer comes from one server, whose partial
    // states hold each group once, and the broker finishes them without merging.
    let mut one: Value = serde_json::from_str(&events_spec(1, 1_000_000)).unwrap();
    one["name"] = "events_one".into();
    one["star_tree"] = json!([{
        "dimensions": ["country", "device"],
        "metrics": ["count(*)", "sum(revenue)"],
        "max_leaf_records": 1000
    }]);
    create_table(&client, c.broker(), &one.to_string()).await;
    load_events_into(&client, c.broker(), "events_one", 200_000, alone_dir.path()).await;
    let plan = sql(
        &client,
        c.broker(),
        "EXPLAIN SELECT country, count(*) FROM events_one GROUP BY country",
    )
    .await;
    assert!(plan.to_string().contains("FinishExec"), "{plan}");
    for (q, tol) in queries(newest.as_str().expect("max(ts)")) {
        let want = rows(&client, &alone, &q).await;
        let got = rows(
            &client,
            c.broker(),
            &q.replace("FROM events", "FROM events_one"),
        )
        .await;
        assert!(
            close(&want, &got, tol),
            "{q} (one segment)\nstandalone: {want}\ncluster:    {got}"
        );
    }
    let v = sql(&client, c.broker(), "SELECT count(*) FROM events_one").await;
    assert_eq!(v["numServersResponded"], json!(1), "{v}");
    // Its segment's star-tree answers a GROUP BY it covers on the server; Pinot's
    // `useStarTree=false` reaches the server, which then reads the rows, and both agree.
    let q = "SELECT country, device, count(*) FROM events_one \
             GROUP BY country, device ORDER BY country, device";
    let asked = |options: &str| {
        let body = json!({ "sql": q, "queryOptions": options });
        let req = client.post(format!("{}/query/sql", c.broker().base));
        async move {
            req.json(&body)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let tree = asked("useResultCache=false").await;
    let raw = asked("useResultCache=false;useStarTree=false").await;
    assert_eq!(tree["numSegmentsStarTree"], json!(1), "{tree}");
    assert_eq!(raw["numSegmentsStarTree"], json!(0), "{raw}");
    assert_eq!(raw["numDocsScanned"], json!(200_000), "{raw}");
    assert_eq!(tree["resultTable"], raw["resultTable"]);
    // The broker reuses a batch table's result while its segments stay the same: the second
    // run asks no server.
    let q = "SELECT country, count(*) FROM events GROUP BY country ORDER BY 2 DESC LIMIT 3";
    let first = rows(&client, c.broker(), q).await;
    let asked = c.fragments(&client).await;
    assert_eq!(rows(&client, c.broker(), q).await, first);
    assert_eq!(
        c.fragments(&client).await,
        asked,
        "a cached result asked servers"
    );
    // The SQL surface's files, their tables replicated over the servers.
    crate::slt::run_all(c.broker(), Some(2)).await;
}

/// Dimension tables `countries` (country, region, pop) and `devices` (device, class) over
/// the values of `events`, on `s`.
async fn load_dimensions(client: &reqwest::Client, s: &Server) {
    let values = |col: &str| {
        let q = format!("SELECT DISTINCT {col} FROM events ORDER BY 1");
        async move {
            let rows = rows(client, s, &q).await;
            let rows = rows.as_array().unwrap().clone();
            rows.into_iter()
                .map(|r| r[0].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    const REGIONS: [&str; 4] = ["north", "south", "east", "west"];
    const CLASSES: [&str; 2] = ["portable", "fixed"];
    let countries = values("country").await;
    let devices = values("device").await;
    assert!(countries.len() > 20 && devices.len() > 2);
    let dims = [
        (
            "countries",
            r#"{"name":"countries","columns":[{"name":"country","type":"STRING"},{"name":"region","type":"STRING"},{"name":"pop","type":"LONG"}]}"#,
            countries
                .iter()
                .enumerate()
                .map(|(i, c)| json!({"country": c, "region": REGIONS[i % 4], "pop": i * 1000}))
                .collect::<Vec<_>>(),
        ),
        (
            "devices",
            r#"{"name":"devices","columns":[{"name":"device","type":"STRING"},{"name":"class","type":"STRING"}]}"#,
            devices
                .iter()
                .enumerate()
                .map(|(i, d)| json!({"device": d, "class": CLASSES[i % 2]}))
                .collect(),
        ),
    ];
    for (name, spec, rows) in dims {
        create_table(client, s, spec).await;
        let body: String = rows.iter().map(|r| format!("{r}\n")).collect();
        ingest_ndjson(client, s, name, body.into_bytes()).await;
    }
}

/// Joins of `events` with small dimension tables: the small sides are sent to the servers
/// (broadcast), which join and aggregate their share of the events; a join whose small side
/// turns out too large is joined on the broker. Every answer equals standalone's.
async fn broadcast_joins_equal_standalone(
    client: &reqwest::Client,
    c: &TestCluster,
    alone: &Server,
) {
    load_dimensions(client, c.broker()).await;
    load_dimensions(client, alone).await;
    let star = "SELECT c.region, d.class, count(*) AS n, sum(e.revenue) AS rev FROM events e \
                JOIN countries c ON e.country = c.country JOIN devices d ON e.device = d.device \
                GROUP BY 1, 2 ORDER BY 1, 2";
    let queries = [
        star,
        "SELECT c.country, count(*) FROM events e JOIN countries c ON e.country = c.country WHERE c.pop < 5000 GROUP BY 1 ORDER BY 1",
        "SELECT c.region, approx_distinct(e.user_id), max(e.latency_ms) FROM events e JOIN countries c ON e.country = c.country WHERE e.event_type = 'purchase' GROUP BY 1 ORDER BY 1",
        "SELECT count(*), count(c.region) FROM countries c RIGHT JOIN events e ON e.country = c.country AND c.pop < 3000",
        "SELECT e.event_type, count(*) FROM events e WHERE e.country IN (SELECT country FROM countries WHERE pop < 3000) GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 5",
        "SELECT e.event_id, c.region FROM events e JOIN countries c ON e.country = c.country WHERE c.pop < 2000 ORDER BY e.ts DESC, e.event_id LIMIT 5",
        // Joins whose output depends on every event stay on the broker.
        "SELECT count(*) FROM countries c WHERE c.country IN (SELECT country FROM events WHERE device = 'tv')",
        "SELECT count(*), count(e.event_id) FROM countries c LEFT JOIN events e ON e.country = c.country AND e.revenue > 400",
    ];
    for q in queries {
        let want = rows(client, alone, q).await;
        let got = rows(client, c.broker(), q).await;
        assert!(
            close(&want, &got, 1e-9),
            "{q}\nstandalone: {want}\ncluster:    {got}"
        );
    }
    let plan = sql(client, c.broker(), &format!("EXPLAIN {star}")).await;
    assert!(plan.to_string().contains("broadcast joins"), "{plan}");
    let metrics = crate::harness::get_text(client, c.broker(), "/metrics").await;
    assert!(
        metrics.contains("basalt_broker_broadcast_joins_total{outcome=\"sent\"}"),
        "{metrics}"
    );
    // A small side estimated small (a filter the scan cannot answer) that is not: 200,000
    // rows, over the 100,000 a broker sends. The join runs on the broker, answering the same.
    let q = "SELECT count(*), count(DISTINCT e.user_id) FROM events e \
             JOIN (SELECT event_id FROM events WHERE length(event_id) > 0) x ON e.event_id = x.event_id";
    let plan = sql(client, c.broker(), &format!("EXPLAIN {q}")).await;
    assert!(plan.to_string().contains("broadcast join"), "{plan}");
    assert_eq!(
        rows(client, c.broker(), q).await,
        rows(client, alone, q).await
    );
    let metrics = crate::harness::get_text(client, c.broker(), "/metrics").await;
    assert!(
        metrics.contains("basalt_broker_broadcast_joins_total{outcome=\"joined_on_broker\"} 1"),
        "{metrics}"
    );
}

/// A broker and servers s1-s3 over `url`, with 100,000 events in `events` (replication
/// 2, 10 segments) placed on two servers each.
async fn three_servers_with_events(url: &str, client: &reqwest::Client) -> TestCluster {
    let c = TestCluster::three_servers(url);
    create_table(client, c.broker(), &events_spec(2, 10_000)).await;
    load_events(client, c.broker(), 100_000, c.dir.path()).await;
    wait_for("segments placed twice", Duration::from_secs(60), || async {
        (c.loaded(client).await.values().sum::<u64>() == 20).then_some(())
    })
    .await;
    c
}

/// Reads `count(*)` in a loop while `during` runs; every answer must be complete and
/// exactly `n`.
async fn complete_throughout<F: std::future::Future<Output = ()>>(
    client: &reqwest::Client,
    broker: &Server,
    n: u64,
    during: F,
) -> usize {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (client, base, stop) = (client.clone(), broker.base.clone(), stop.clone());
        tokio::spawn(async move {
            let mut answers = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let v = sql_at(&client, &base, "SELECT count(*) FROM events").await;
                assert_eq!(v["exceptions"], json!([]), "{v}");
                assert_eq!(v["partialResult"], json!(false), "{v}");
                assert_eq!(v["resultTable"]["rows"][0][0], json!(n), "{v}");
                answers += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            answers
        })
    };
    during.await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    reader.await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn servers_die_join_and_leave_without_a_wrong_answer() {
    let Some(url) = deep_store("cluster-failover") else {
        return;
    };
    let _one = ONE_CLUSTER.lock().await;
    let client = reqwest::Client::new();
    let mut c = three_servers_with_events(&url, &client).await;
    let broker = c.broker.take().unwrap();

    // kill -9 one server: answers stay complete (its segments are retried on replicas),
    // and its segments are replicated again on the others.
    let answers = complete_throughout(&client, &broker, 100_000, async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        c.kill9("s2");
        wait_for("replicas restored", Duration::from_secs(60), || async {
            let l = c.loaded(&client).await;
            (l.values().sum::<u64>() == 20).then_some(())
        })
        .await;
    })
    .await;
    assert!(answers > 5, "only {answers} answers while a server died");

    // A fourth and a fifth server join, then one leaves gracefully: segments move, the new
    // replicas load before the old ones drop.
    let answers = complete_throughout(&client, &broker, 100_000, async {
        c.start_server("s4");
        c.start_server("s5");
        wait_for(
            "segments spread to s4 and s5",
            Duration::from_secs(60),
            || async {
                let l = c.loaded(&client).await;
                (l.values().sum::<u64>() == 20 && l["s4"] > 0 && l["s5"] > 0).then_some(())
            },
        )
        .await;
        c.stop("s1");
        wait_for(
            "s1's segments placed elsewhere",
            Duration::from_secs(60),
            || async { (c.loaded(&client).await.values().sum::<u64>() == 20).then_some(()) },
        )
        .await;
    })
    .await;
    assert!(
        answers > 5,
        "only {answers} answers while servers joined and left"
    );
    // Each server keeps cache files only for the segments it holds (moved ones are evicted).
    for (id, n) in settled(&c, &client, 20).await {
        let dir = c.dir.path().join(&id).join("cache").join("events");
        let files = std::fs::read_dir(&dir)
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.path().extension().is_some_and(|x| x == "seg"))
                    .count()
            })
            .unwrap_or(0);
        assert_eq!(
            files as u64, n,
            "{id}: {files} cached segment files, {n} held"
        );
    }

    // A restarted broker routes again from gossip and the metastore.
    drop(broker);
    c.start_broker();
    let v = wait_for(
        "the new broker answers",
        Duration::from_secs(30),
        || async {
            let v = count(&client, c.broker()).await;
            (v["resultTable"]["rows"][0][0] == json!(100_000)).then_some(v)
        },
    )
    .await;
    assert_eq!(v["partialResult"], json!(false), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lost_replicas_give_a_flagged_partial_result() {
    let Some(url) = deep_store("cluster-partial") else {
        return;
    };
    let _one = ONE_CLUSTER.lock().await;
    let client = reqwest::Client::new();
    let mut c = three_servers_with_events(&url, &client).await;
    // Placement settled (a server that saw fewer peers at first hands extra segments over).
    let held = settled(&c, &client, 20).await;
    // The server holding the fewest segments survives; the other two die at once. The
    // segments only they held have no replica until the survivor loads them, after gossip
    // declares them dead (about 2 s).
    let survivor = held.iter().min_by_key(|(_, n)| **n).unwrap().0.clone();
    assert!(held[&survivor] < 10, "{held:?}");
    for s in ["s1", "s2", "s3"] {
        if s != survivor {
            c.kill9(s);
        }
    }
    let v = count(&client, c.broker()).await;
    assert_eq!(v["partialResult"], json!(true), "{v}");
    let counted = v["resultTable"]["rows"][0][0].as_u64().unwrap();
    assert!(counted < 100_000, "{v}");
    let message = v["exceptions"][0]["message"].as_str().unwrap().to_string();
    assert_eq!(v["exceptions"][0]["errorCode"], json!(305), "{v}");
    assert!(message.contains("events__"), "names no segment: {message}");
    assert!(
        v["numServersQueried"].as_u64() > v["numServersResponded"].as_u64(),
        "{v}"
    );
    // A partial result is never reused: the same query asks the servers again.
    let asked = c.fragments(&client).await;
    let again = count(&client, c.broker()).await;
    assert_eq!(again["partialResult"], json!(true), "{again}");
    assert!(
        c.fragments(&client).await > asked,
        "a partial result was reused"
    );
    // PostgreSQL clients get an error unless they opt in.
    let (pg, conn) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user=basalt dbname=basalt",
            c.broker().pg.rsplit(':').next().unwrap()
        ),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let e = pg
        .simple_query("SELECT count(*) FROM events")
        .await
        .expect_err("a partial result must fail without the opt-in");
    let db = e.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "57P03", "{db:?}");
    assert!(db.message().contains("partial"), "{db:?}");
    pg.simple_query("SET basalt.allow_partial_results = on")
        .await
        .unwrap();
    let rows = pg
        .simple_query("SELECT count(*) FROM events")
        .await
        .unwrap();
    let n: u64 = match &rows[1] {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).unwrap().parse().unwrap(),
        other => panic!("{other:?}"),
    };
    assert!(n < 100_000);
    // Once gossip declares them dead, s3 loads every segment and answers are whole again.
    wait_for("complete again", Duration::from_secs(60), || async {
        let v = count(&client, c.broker()).await;
        (v["resultTable"]["rows"][0][0] == json!(100_000) && v["partialResult"] == json!(false))
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flight_port_refuses_calls_without_the_cluster_token() {
    let Some(url) = deep_store("cluster-token") else {
        return;
    };
    let _one = ONE_CLUSTER.lock().await;
    let mut c = TestCluster::new(&url);
    c.start_server("s1");
    let flight = c.servers["s1"].cmd[c.servers["s1"]
        .cmd
        .iter()
        .position(|a| a == "--flight-addr")
        .unwrap()
        + 1]
    .clone();
    let channel = tonic::transport::Channel::from_shared(format!("http://{flight}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = arrow_flight::flight_service_client::FlightServiceClient::new(channel);
    let e = client
        .do_get(arrow_flight::Ticket {
            ticket: b"anything".to_vec().into(),
        })
        .await
        .expect_err("no token");
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    let mut req = tonic::Request::new(arrow_flight::Ticket {
        ticket: b"anything".to_vec().into(),
    });
    req.metadata_mut().insert(
        "authorization",
        "Bearer wrong-token-0123456789".parse().unwrap(),
    );
    let e = client.do_get(req).await.expect_err("wrong token");
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    // With the token, a malformed ticket is a clear InvalidArgument, not a crash.
    let mut req = tonic::Request::new(arrow_flight::Ticket {
        ticket: vec![0xff, 0xff, 0xff].into(),
    });
    req.metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    let e = client.do_get(req).await.expect_err("bad ticket");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");

    // With the token, a well-formed fragment that is not Basalt's shape — here DataFusion's
    // own CSV scan of a file on the server's disk — is refused before it runs: the token
    // lets a broker ask for segments, never for the server's files.
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret.csv");
    std::fs::write(&secret, "s\nthe server's secret\n").unwrap();
    let ctx = datafusion::prelude::SessionContext::new();
    let scan = ctx
        .read_csv(
            secret.to_str().unwrap(),
            datafusion::prelude::CsvReadOptions::new(),
        )
        .await
        .unwrap()
        .create_physical_plan()
        .await
        .unwrap();
    let plan = datafusion_proto::bytes::physical_plan_to_bytes(scan).unwrap();
    let ticket = basalt_cluster::wire::FragmentTicket {
        plan: plan.to_vec(),
        timeout_ms: 10_000,
        max_rows: 1_000,
        memory_limit: 1 << 30,
        query_id: "hostile".into(),
        waits: Vec::new(),
        star_tree_off: false,
    };
    let mut req = tonic::Request::new(arrow_flight::Ticket {
        ticket: prost::Message::encode_to_vec(&ticket).into(),
    });
    req.metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    let e = match client.do_get(req).await {
        Err(e) => e,
        Ok(stream) => {
            let mut stream = stream.into_inner();
            let mut leaked = Vec::new();
            let e = loop {
                match futures::StreamExt::next(&mut stream).await {
                    Some(Ok(m)) => leaked.push(m.data_body),
                    Some(Err(e)) => break e,
                    None => panic!("a file scan ran on the server: {leaked:?}"),
                }
            };
            assert!(
                leaked
                    .iter()
                    .all(|b| !String::from_utf8_lossy(b).contains("secret")),
                "{leaked:?}"
            );
            e
        }
    };
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(
        e.message()
            .contains("DataSourceExec may not run on a server"),
        "{e:?}"
    );
}

/// The cluster answer to `q`: its single value and whether it was flagged partial.
async fn cluster_scalar(client: &reqwest::Client, broker: &str, q: &str) -> (u64, bool) {
    let v = sql_at(client, broker, q).await;
    let n = v["resultTable"]["rows"][0][0]
        .as_u64()
        .unwrap_or_else(|| panic!("{q}: {v}"));
    (n, v["partialResult"] == json!(true))
}

/// Produces events `from..to` in chunks of 200 every 100 ms on a thread of its own, storing
/// in `produced` how many have been sent.
fn produce_flowing(
    brokers: &str,
    topic: &str,
    produced: &std::sync::Arc<std::sync::atomic::AtomicU64>,
    from: u64,
    to: u64,
) -> std::thread::JoinHandle<()> {
    let (brokers, topic, produced) = (brokers.to_string(), topic.to_string(), produced.clone());
    std::thread::spawn(move || {
        let p = crate::kafka::producer(&brokers);
        for chunk in (from..to).step_by(200) {
            crate::kafka::produce_all(&p, &topic, &crate::realtime::events(chunk, chunk + 200));
            produced.store(chunk + 200, std::sync::atomic::Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(100));
        }
    })
}

/// Asks `q` every 50 ms for `secs`: no answer may count more events than were produced (one
/// chunk may be in flight), nor be partial unless `partial_ok`. Returns the answers and how
/// many were flagged partial.
fn watch_counts(
    client: &reqwest::Client,
    broker: &str,
    q: &str,
    produced: &std::sync::Arc<std::sync::atomic::AtomicU64>,
    secs: u64,
    partial_ok: bool,
) -> tokio::task::JoinHandle<(usize, usize)> {
    let (client, broker, q, produced) = (
        client.clone(),
        broker.to_string(),
        q.to_string(),
        produced.clone(),
    );
    tokio::spawn(async move {
        let (mut answers, mut partial) = (0, 0);
        let mut last = 0;
        let until = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < until {
            let (n, flagged) = cluster_scalar(&client, &broker, &q).await;
            let ceiling = produced.load(std::sync::atomic::Ordering::SeqCst) + 200;
            assert!(
                n <= ceiling,
                "{n} events counted, at most {ceiling} produced"
            );
            assert!(partial_ok || !flagged, "a partial answer ({n})");
            if !flagged {
                assert!(n >= last, "the count went backwards: {last}, then {n}");
                last = n;
            }
            answers += 1;
            partial += flagged as usize;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (answers, partial)
    })
}

/// A real-time table with `replication: 2` over a 4-partition Kafka topic in a 3-server
/// cluster: each partition is consumed by the two servers ranked first for it (its owner
/// seals, the other is a consuming replica), the broker reads each partition's in-memory
/// rows from one consumer past the checkpoint of its own metastore view (seals every 700
/// rows or 3 s happen throughout), and `kill -9` of an owner while events flow leaves every
/// answer complete: the replica answers at once and takes over sealing. No answer counts an
/// event twice or more than was produced, no count goes backwards, and the final count is
/// exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn real_time_partitions_spread_over_servers_and_fail_over_exactly_once() {
    use crate::realtime::{events, table_spec, PARTITIONS, SERIAL};
    let Some(brokers) = crate::harness::service_env("BASALT_TEST_KAFKA", "cluster real-time")
    else {
        return;
    };
    let Some(url) = deep_store("cluster-realtime") else {
        return;
    };
    let _one = ONE_CLUSTER.lock().await;
    let _serial = SERIAL.lock().await;
    // A table name whose partitions rendezvous hashing spreads over at least two of the
    // three servers (the assignment every server computes).
    let three = basalt_cluster::Placement::new(["s1", "s2", "s3"].map(String::from));
    let assigned = |table: &str| {
        let mut by_server: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for p in 0..PARTITIONS {
            for s in three.partition_replicas(table, p, 2) {
                by_server.entry(s.to_string()).or_default().push(p as u64);
            }
        }
        by_server
    };
    let table = loop {
        let t = crate::kafka::unique("rt");
        let owners: BTreeSet<&str> = (0..PARTITIONS)
            .filter_map(|p| three.partition_owner(&t, p))
            .collect();
        if owners.len() >= 2 {
            break t;
        }
    };
    let topic = crate::kafka::unique("events");
    crate::kafka::create_topic(&brokers, &topic, PARTITIONS).await;
    let client = reqwest::Client::new();
    let mut c = TestCluster::three_servers(&url);
    let mut spec: Value =
        serde_json::from_str(&table_spec(&table, &brokers, &topic, None)).unwrap();
    spec["replication"] = 2.into();
    let spec = spec.to_string();
    create_table(&client, c.broker(), &spec).await;
    let producer = crate::kafka::producer(&brokers);
    let total = format!("SELECT count(*) FROM {table}");
    let distinct = format!("SELECT count(DISTINCT event_id) FROM {table}");

    // Each partition is consumed by exactly the servers the assignment names.
    let want = assigned(&table);
    wait_for(
        "each partition consumed by its assigned servers",
        Duration::from_secs(60),
        || async {
            let by_server = c.consuming(&client, &table).await;
            (by_server == want).then_some(by_server)
        },
    )
    .await;
    tokio::task::block_in_place(|| crate::kafka::produce_all(&producer, &topic, &events(0, 3000)));
    let broker_url = c.broker().base.clone();
    let exact = |want: u64| {
        let (client, broker, q) = (client.clone(), broker_url.clone(), total.clone());
        async move {
            wait_for(
                &format!("{q} = {want}"),
                Duration::from_secs(90),
                || async {
                    let (n, partial) = cluster_scalar(&client, &broker, &q).await;
                    assert!(n <= want, "{q}: {n} > {want}: an event counted twice");
                    (n == want && !partial).then_some(())
                },
            )
            .await
        }
    };
    exact(3000).await;

    // kill -9 the owner of partition 0 while events flow: every answer stays complete.
    let victim = three.partition_owner(&table, 0).unwrap().to_string();
    let produced = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(3000));
    let flowing = produce_flowing(&brokers, &topic, &produced, 3000, 9000);
    let watcher = watch_counts(&client, &broker_url, &total, &produced, 12, false);
    tokio::time::sleep(Duration::from_millis(700)).await;
    c.kill9(&victim);
    let (answers, _) = watcher.await.unwrap();
    flowing.join().unwrap();
    assert!(answers > 20, "only {answers} answers during the failover");

    // Its partitions are consumed by both survivors, and nothing is lost or doubled.
    let survivors = wait_for("partitions taken over", Duration::from_secs(60), || async {
        let by_server = c.consuming(&client, &table).await;
        let every = (0..PARTITIONS as u64).collect::<Vec<_>>();
        (by_server.len() == 2 && by_server.values().all(|p| *p == every)).then_some(by_server)
    })
    .await;
    assert!(!survivors.contains_key(&victim), "{survivors:?}");
    exact(9000).await;

    // A server joins while events flow: partitions and segments move to it, and no answer is
    // partial or counts an event twice (a partition is consumed by its old owner until the
    // new one consumes it; a segment is kept until its new replica loads it).
    let flowing = produce_flowing(&brokers, &topic, &produced, 9000, 12000);
    let watcher = watch_counts(&client, &broker_url, &total, &produced, 10, false);
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.start_server("s4");
    let (answers, _) = watcher.await.unwrap();
    flowing.join().unwrap();
    assert!(answers > 20, "only {answers} answers while a server joined");
    exact(12000).await;
    tokio::time::sleep(Duration::from_secs(4)).await; // seals meanwhile
    let (n, partial) = cluster_scalar(&client, &c.broker().base, &total).await;
    assert_eq!((n, partial), (12000, false));
    let (n, _) = cluster_scalar(&client, &c.broker().base, &distinct).await;
    assert_eq!(n, 12000, "distinct events");

    // `standalone` consuming the same topic answers the differential set the same.
    let alone_dir = tempfile::tempdir().unwrap();
    let alone = Server::start(&alone_dir.path().join("data"), None);
    create_table(&client, &alone, &spec).await;
    crate::realtime::wait_count(&client, &alone, &total, 12000).await;
    let newest =
        crate::harness::scalar(&client, &alone, &format!("SELECT max(ts) FROM {table}")).await;
    for (q, tol) in queries(newest.as_str().expect("max(ts)")) {
        let q = q.replace("FROM events", &format!("FROM {table}"));
        let want = rows(&client, &alone, &q).await;
        let got = rows(&client, c.broker(), &q).await;
        assert!(
            close(&want, &got, tol),
            "{q}\nstandalone: {want}\ncluster:    {got}"
        );
    }
}

/// A PARTIAL upsert table over a keyed 4-partition topic in a 3-server cluster with
/// `replication: 2`: each partition's segments live with its consumer (partition-aware
/// placement) and the broker reads each partition whole from its consumer, whose key map
/// alone knows the current valid docs. Through seals and `kill -9` of a consumer while events
/// flow, no answer shows a key twice, and the table ends equal to the reference model
/// (INCREMENT sums count no replayed event twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upsert_partitions_stay_with_their_key_maps_through_a_failover() {
    use crate::upsert::{event, message, spec, Model, PARTITIONS, SUMMARY};
    let Some(brokers) = crate::harness::service_env("BASALT_TEST_KAFKA", "cluster upsert") else {
        return;
    };
    let Some(url) = deep_store("cluster-upsert") else {
        return;
    };
    let _one = ONE_CLUSTER.lock().await;
    let _serial = crate::realtime::SERIAL.lock().await;
    let (topic, table) = (
        crate::kafka::unique("orders"),
        crate::kafka::unique("orders"),
    );
    crate::kafka::create_topic(&brokers, &topic, PARTITIONS).await;
    let client = reqwest::Client::new();
    let mut c = TestCluster::three_servers(&url);
    let source = json!({"kafka": {"brokers": brokers, "topic": topic, "format": "json",
        "start": "earliest", "properties": {"session.timeout.ms": "6000"}}});
    let mut v: Value = serde_json::from_str(&spec(&table, Some(source), None)).unwrap();
    v["replication"] = 2.into();
    create_table(&client, c.broker(), &v.to_string()).await;
    let base = c.broker().base.clone();
    let q = SUMMARY.replace("{t}", &table);
    let summary = |client: reqwest::Client, base: String, q: String| async move {
        let v = sql_at(&client, &base, &q).await;
        assert_eq!(
            v["exceptions"].as_array().map_or(0, |e| e
                .iter()
                .filter(|e| e["errorCode"] != json!(305))
                .count()),
            0,
            "{v}"
        );
        let row = v["resultTable"]["rows"][0].clone();
        assert_eq!(row[0], row[1], "a key shows twice: {v}");
        (row, v["partialResult"] == json!(true))
    };
    let wait_model = |want: Value| {
        let (client, base, q) = (client.clone(), base.clone(), q.clone());
        async move {
            wait_for(
                "the table equals the model",
                Duration::from_secs(90),
                || async {
                    let (got, partial) = summary(client.clone(), base.clone(), q.clone()).await;
                    (got == want && !partial).then_some(())
                },
            )
            .await
        }
    };
    let mut model = Model::default();
    let batch = |from: u64, to: u64, model: &mut Model| -> Vec<(i32, Vec<u8>)> {
        (from..to)
            .map(|i| {
                let e = event(i);
                model.apply(&e);
                ((e.key % PARTITIONS as u64) as i32, message(&e))
            })
            .collect()
    };
    let producer = crate::kafka::producer(&brokers);
    let first = batch(0, 2000, &mut model);
    tokio::task::block_in_place(|| crate::kafka::produce_all(&producer, &topic, &first));
    wait_model(model.summary()).await;

    // kill -9 the consumer of partition 0 while events flow; a reader checks every answer.
    let owners = c.consuming(&client, &table).await;
    let victim = owners
        .iter()
        .find(|(_, p)| p.contains(&0))
        .map(|(s, _)| s.clone())
        .expect("partition 0 consumed");
    let rest: Vec<Vec<(i32, Vec<u8>)>> = (2000..5000)
        .step_by(250)
        .map(|i| batch(i, i + 250, &mut model))
        .collect();
    let flowing = {
        let (brokers, topic) = (brokers.clone(), topic.clone());
        std::thread::spawn(move || {
            let p = crate::kafka::producer(&brokers);
            for chunk in rest {
                crate::kafka::produce_all(&p, &topic, &chunk);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let reader = {
        let (client, base, q) = (client.clone(), base.clone(), q.clone());
        tokio::spawn(async move {
            let until = Instant::now() + Duration::from_secs(8);
            let mut answers = 0;
            while Instant::now() < until {
                summary(client.clone(), base.clone(), q.clone()).await;
                answers += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            answers
        })
    };
    tokio::time::sleep(Duration::from_millis(600)).await;
    c.kill9(&victim);
    let answers = reader.await.unwrap();
    flowing.join().unwrap();
    assert!(answers > 10, "only {answers} answers during the failover");
    wait_model(model.summary()).await;
    tokio::time::sleep(Duration::from_secs(3)).await; // seals meanwhile
    let (got, partial) = summary(client.clone(), base.clone(), q.clone()).await;
    assert_eq!((got, partial), (model.summary(), false));
}
