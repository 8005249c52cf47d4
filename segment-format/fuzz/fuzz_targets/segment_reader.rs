//! Fuzz target: arbitrary bytes through the segment reader, predicate evaluation and column
//! materialisation must return errors, never panic. Run with `cargo fuzz run segment_reader`
//! from segment-format/ (needs a nightly toolchain; CI runs the proptest equivalent,
//! `corrupt_bytes_never_panic`, on every build).
#![no_main]

use basalt_segment::{evaluate, CmpOp, Predicate, SegmentReader, Value};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(r) = SegmentReader::open(bytes::Bytes::copy_from_slice(data)) else { return };
    let docs: Vec<u32> = (0..r.row_count().min(4096)).collect();
    for c in 0..r.footer().columns.len() {
        let _ = r.read_column(c, &docs);
        let name = r.column_def(c).name.clone();
        for v in [Value::Int(1), Value::Str("a".into()), Value::Float(0.5), Value::Bool(true)] {
            let _ = evaluate(&r, &Predicate::Compare { column: name.clone(), op: CmpOp::GtEq, value: v });
        }
    }
});
