//! The hardening and chaos suite: hostile input and faults against the real binary (and,
//! where a test needs them, real tansu and SeaweedFS). Compiled into the one end-to-end
//! test binary (`tests/e2e/main.rs` includes this folder). Tests that inject many faults
//! run a bounded number of rounds by default; `BASALT_CHAOS_LONG=1` runs more, and
//! `BASALT_CHAOS_SEED` replays a seeded run. Faults at exact steps come from failpoints
//! (`basalt_ingest::fault`), which only test builds carry.

mod front_doors;
mod hostile_specs;
mod kill9;
mod panics;
mod recovery;
mod resources;
mod s3_outage;
mod two_servers;
