//! The Grafana dashboards in `dashboards/grafana` against a live Basalt: every SQL panel,
//! its Grafana macros expanded, runs over the PostgreSQL protocol and answers rows; every
//! Prometheus panel names metrics `/metrics` exposes (`tests/clients/dashboards.py`).

use std::time::Duration;

use serde_json::json;

use crate::harness::{scalar, service_env, wait_for, Server};
use crate::postgres::{create_live_events, load_events, run_client_script};

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
    create_live_events(
        &c,
        &s,
        json!({"events_per_second": 2000, "partitions": 2, "malformed_ratio": 0.01}),
    )
    .await;
    wait_for("quarantined messages", Duration::from_secs(30), || async {
        let n = scalar(&c, &s, r#"SELECT count(*) FROM "live_events$quarantine""#).await;
        (n.as_u64().unwrap_or(0) > 0).then_some(())
    })
    .await;
    // A query, so the latency histogram has series before the script reads /metrics.
    scalar(&c, &s, "SELECT count(*) FROM live_events").await;
    let (host, port) = s.pg.rsplit_once(':').unwrap();
    run_client_script(
        &python,
        "dashboards.py",
        &[host, port, &s.base],
        "dashboard queries checked",
    );
}
