//! End-to-end tests: they start the real `basalt` binary and talk to it over HTTP.
//! One test binary (every integration test target links the whole tree).

mod harness;
mod http_api;
mod kafka;
mod realtime;
mod s3;
mod slt;
mod upsert;
