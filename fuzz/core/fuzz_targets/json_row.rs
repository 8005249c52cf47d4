//! Kafka message payloads through the real-time decoder: each becomes a row or a
//! quarantine entry naming why, never a panic; rows taken form batches of the schema.
#![no_main]

use basalt_fuzz_core::{check_batch, schema, BATCH_ROWS};
use basalt_ingest::quarantine::{MessageDecoder, MessageOrigin};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut d = MessageDecoder::new(&schema(), BATCH_ROWS).with_origins();
    // Several messages per input: NUL separates them.
    for (offset, payload) in data.split(|&b| b == 0).enumerate() {
        let origin = MessageOrigin {
            topic: "t".into(),
            partition: 0,
            offset: offset as i64,
            timestamp: Some(1_700_000_000_000),
        };
        if let Err(q) = d.decode(payload, origin) {
            assert!(!q.reason.is_empty());
            assert_eq!(q.raw, payload);
        }
    }
    let pending = d.pending_rows();
    match d.take_batch() {
        Ok(Some(b)) => {
            assert_eq!(b.num_rows(), pending);
            check_batch(&b);
        }
        Ok(None) => assert_eq!(pending, 0),
        Err(_) => {}
    }
    assert_eq!(d.take_origins().len(), pending);
});
