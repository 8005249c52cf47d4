//! What the fuzz targets share: one table schema with a column of every type (a
//! non-nullable time column, a multi-value column, a JSON column), and decode limits small
//! enough that the caps themselves are reached.

use basalt_ingest::decode::DecodeLimits;
use basalt_segment::SegmentSchema;

/// A column of every type.
pub fn schema() -> SegmentSchema {
    basalt_segment::fuzzing::every_type_schema()
}

/// Rows per batch.
pub const BATCH_ROWS: usize = 64;

/// Lines up to 4 KiB, batches up to 64 KiB.
pub fn limits() -> DecodeLimits {
    DecodeLimits {
        max_line_bytes: 4096,
        max_batch_bytes: 64 << 10,
        // Rows are work: a file declaring more than this is refused before decoding.
        max_rows: 1 << 20,
    }
}

/// Checks a decoded batch against the schema: a decoder's output must always fit it.
pub fn check_batch(b: &arrow::record_batch::RecordBatch) {
    assert_eq!(b.num_columns(), schema().columns.len());
    assert!(b.num_rows() <= BATCH_ROWS);
    assert_eq!(b.column(0).null_count(), 0, "the time column is never null");
}
