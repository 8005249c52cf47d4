//! Metastore state objects as read back from a deep store: decoded (formats 2 and 3), then
//! what loading a table does with one — its spec validated, its keyed config derived.
#![no_main]

use basalt_ingest::metastore::TableState;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(state) = TableState::decode(data, "fuzz") else { return };
    let _ = state.spec.validate();
    let _ = basalt_ingest::upsert::KeyedTable::of(&state.spec);
    let _ = serde_json::to_vec(&state).expect("a decoded state serializes");
});
