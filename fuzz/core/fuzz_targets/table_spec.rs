//! Table specs as a client posts them: parsed and validated, then checked against the
//! operator's policy, their Kafka properties validated and redacted, their keyed config
//! derived. Whatever is accepted must survive a round trip.
#![no_main]

use basalt_ingest::policy::TablePolicy;
use basalt_ingest::TableSpec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(spec) = TableSpec::from_json(data) else { return };
    let roots = vec!["file:///data".to_string(), "s3://bucket/prefix".to_string()];
    let _ = TablePolicy::default().check(&spec, &roots);
    let _ = basalt_ingest::upsert::KeyedTable::of(&spec);
    let redacted = spec.redacted();
    let json = serde_json::to_vec(&redacted).expect("a spec serializes");
    TableSpec::from_json(&json).expect("a redacted valid spec is valid");
});
