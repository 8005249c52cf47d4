//! The Grafana dashboards in `dashboards/grafana` against a live Basalt: every SQL panel,
//! its Grafana macros expanded, runs over the PostgreSQL protocol and answers rows; every
//! Prometheus panel names metrics `/metrics` exposes (`tests/clients/dashboards.py`).

use std::process::Command;
use std::time::Duration;

use serde_json::json;

use crate::harness::{repo_path, scalar, service_env, wait_for, Server};
use crate::postgres::load_events;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grafana_dashboards_run_against_basalt() {
    let Some(python) = service_env(
        "BASALT_TEST_PG_CLIENTS",
        "grafana_dashboards_run_against_basalt",
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), None);
    let c = reqwest::Client::new();
    load_events(&c, &s, dir.path(), 20_000).await;
    // A real-time table, so the operations dashboard has ingestion metrics and a quarantine.
    let mut live: serde_json::Value =
        serde_json::from_str(basalt_ingest::gen::EVENTS_SPEC).unwrap();
    live["name"] = "live_events".into();
    live["source"] = json!({"generator": {
        "events_per_second": 2000, "partitions": 2, "malformed_ratio": 0.01}});
    let r = c.post(s.url("/tables")).json(&live).send().await.unwrap();
    assert_eq!(r.status(), 201);
    wait_for("quarantined messages", Duration::from_secs(30), || async {
        let n = scalar(&c, &s, r#"SELECT count(*) FROM "live_events$quarantine""#).await;
        (n.as_u64().unwrap_or(0) > 0).then_some(())
    })
    .await;
    // One query over each protocol, so the latency histograms have series for both.
    scalar(&c, &s, "SELECT count(*) FROM live_events").await;
    let (host, port) = s.pg.rsplit_once(':').unwrap();
    let out = Command::new(python)
        .arg(repo_path("tests/clients/dashboards.py"))
        .args([host, port, &s.base])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("dashboard queries checked"), "{stdout}");
}
