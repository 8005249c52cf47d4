//! Request bodies through the NDJSON decoder: every batch fits the schema, errors name a
//! line, and nothing panics.
#![no_main]

use basalt_fuzz_core::{check_batch, limits, schema, BATCH_ROWS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut sink = |b: arrow::record_batch::RecordBatch| {
        check_batch(&b);
        Ok(())
    };
    let _ = basalt_ingest::decode::decode_ndjson(data, &schema(), BATCH_ROWS, &limits(), &mut sink);
});
