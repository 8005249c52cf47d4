//! Segment bytes through the reader: first byte 0, the rest is a segment file as is (header,
//! trailer and checksum checks); otherwise the input is a segment in its unpacked form
//! (footer JSON beside the body, see `basalt_segment::fuzzing`), packed with every checksum
//! recomputed so mutations reach the section decoders. Errors are expected; panics,
//! overflows and unbounded allocations are bugs.
#![no_main]

use basalt_segment::fuzzing::{exercise, pack};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match data.split_first() {
        Some((0, raw)) => exercise(raw.to_vec()),
        _ => exercise(pack(data)),
    }
});
