//! Keyed (upsert/dedup) partition snapshots as read back from a deep store. The input gets
//! its checksum appended, so mutations reach the slot and bitmap decoding.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut bytes = data.to_vec();
    bytes.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
    if let Ok(slots) = basalt_ingest::upsert::snapshot::decode(&bytes) {
        // What decodes encodes back to the same bytes.
        let again = basalt_ingest::upsert::snapshot::encode(&slots).expect("encodes");
        assert_eq!(basalt_ingest::upsert::snapshot::decode(&again).unwrap().len(), slots.len());
    }
});
