//! End-to-end tests: they start the real `basalt` binary and talk to it over HTTP and the
//! PostgreSQL protocol.
//! One test binary (every integration test target links the whole tree).

#[path = "../chaos/mod.rs"]
mod chaos;
mod cli;
mod cluster;
mod console;
mod dashboards;
mod harness;
mod http_api;
mod kafka;
mod postgres;
mod realtime;
mod s3;
mod semantic;
mod slt;
mod tpch;
mod upsert;
mod warehouse;
mod workload;
