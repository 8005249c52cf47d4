//! The web console in headless Chromium (`tests/clients/console_browser.py`): load it, run a
//! query, see its rows and chart, the table list and the live page; screenshots are written
//! to `<target>/tmp/console-screenshots`.

use serde_json::json;

use crate::harness::{service_env, Server};
use crate::postgres::{create_live_events, load_events, run_client_script};

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
    create_live_events(&c, &s, json!({"events_per_second": 500, "partitions": 1})).await;
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    run_client_script(
        &python,
        "console_browser.py",
        &[&s.base, shots.to_str().unwrap()],
        "console checks passed",
    );
    assert!(shots.join("console-query.png").exists());
}
