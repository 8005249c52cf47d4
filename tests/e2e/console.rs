//! The web console in headless Chromium (`tests/clients/console_browser.py`): load it, run a
//! query, see its rows and chart, the table list and the live page; screenshots are written
//! to `<target>/tmp/console-screenshots`.

use std::process::Command;

use serde_json::json;

use crate::harness::{repo_path, service_env, Server};
use crate::postgres::load_events;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_console_in_headless_chromium() {
    let Some(python) = service_env("BASALT_TEST_CHROMIUM", "web_console_in_headless_chromium")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), None);
    let c = reqwest::Client::new();
    load_events(&c, &s, dir.path(), 20_000).await;
    let mut live: serde_json::Value =
        serde_json::from_str(basalt_ingest::gen::EVENTS_SPEC).unwrap();
    live["name"] = "live_events".into();
    live["source"] = json!({"generator": {"events_per_second": 500, "partitions": 1}});
    let r = c.post(s.url("/tables")).json(&live).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    let out = Command::new(python)
        .arg(repo_path("tests/clients/console_browser.py"))
        .arg(&s.base)
        .arg(&shots)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("console checks passed"), "{stdout}");
    assert!(shots.join("console-query.png").exists());
}
