//! TPC-H at scale factor 0.1 through the real binary: DuckDB's `tpch` extension generates
//! the data, `benches/tpch/tpch.py` loads it over HTTP (one table per TPC-H table, dates as
//! TIMESTAMP, decimals as DOUBLE, dimension tables without a time column, segments of 100k
//! rows so that large tables are scanned in several partitions) and checks all 22
//! queries against DuckDB's answers on the same files. Needs the Python with DuckDB 1.5.5
//! and its tpch extension that `tests/services/services.sh` installs (`BASALT_TEST_TPCH`).

use std::process::Command;

use crate::harness::{repo_path, service_env, succeeded, Server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_22_tpch_queries_answer_as_duckdb_does() {
    let Some(python) = service_env("BASALT_TEST_TPCH", "tpch") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), None);
    let out = tokio::task::block_in_place(|| {
        Command::new(python)
            .arg(repo_path("benches/tpch/tpch.py"))
            .args(["--url", &s.base, "--sf", "0.1", "--check"])
            // Several segments per large table: scans of several partitions under joins.
            .args(["--segment-rows", "100000", "--work"])
            .arg(dir.path().join("tpch"))
            .output()
            .unwrap()
    });
    let stdout = succeeded(&out);
    assert!(
        stdout.contains("22 of 22 queries answer as DuckDB does"),
        "{stdout}"
    );
}
