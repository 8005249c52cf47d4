//! Parquet files through the ingest decoder (footer, metadata, pages, casts to the spec's
//! types). The Parquet reader itself panics on some malformed files (in `parquet`, in
//! `arrow-ipc` decoding the embedded Arrow schema, in `arrow-buffer` building levels); the
//! decoder catches those panics around each reader step and answers an error, so they are
//! not crashes here: a panic while `in_parquet_reader()` is let through to that guard, any
//! other panic aborts as usual.
#![no_main]

use basalt_fuzz_core::{check_batch, limits, schema, BATCH_ROWS};
use libfuzzer_sys::fuzz_target;

static HOOK: std::sync::Once = std::sync::Once::new();

fuzz_target!(|data: &[u8]| {
    HOOK.call_once(|| {
        let abort = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !basalt_ingest::decode::in_parquet_reader() {
                abort(info);
            }
        }));
    });
    let mut sink = |b: arrow::record_batch::RecordBatch| {
        check_batch(&b);
        Ok(())
    };
    let bytes = bytes::Bytes::copy_from_slice(data);
    let _ = basalt_ingest::decode::decode_parquet(
        bytes,
        &schema(),
        BATCH_ROWS,
        true,
        &limits(),
        &mut sink,
    );
});
