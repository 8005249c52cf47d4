//! The body formats' readers: NDJSON lines, CSV records, Parquet files into validated Arrow
//! batches through [`RowWriter`]. In: bytes from a request body (or a spooled file). Out:
//! batches of the table's ingest schema, or an error naming the line, row and column.
//!
//! Every reader is bounded whatever the body holds: an NDJSON line or a CSV record longer than
//! `max_line_bytes` is an error before it is buffered whole, a batch is handed on once its
//! rows hold `max_batch_bytes`, and a Parquet file is read with only the spec's columns
//! projected (a column the table does not have is never decoded).

use std::io::{BufRead, Read};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef};
use arrow::datatypes::{DataType, TimeUnit};
use arrow::record_batch::RecordBatch;
use basalt_segment::{ColumnType, SegmentSchema};
use bytes::Bytes;

use super::{ingest_schema, JsonRowError, RowWriter};
use crate::error::{IngestError, Result};
use crate::json_row::ObjectError;

/// Bounds on what one request's reader holds in memory.
#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    /// Longest NDJSON line or CSV record, in bytes (default 16 MiB).
    pub max_line_bytes: usize,
    /// A batch is handed on once its rows hold this many bytes (default 32 MiB), whatever
    /// its row count.
    pub max_batch_bytes: usize,
    /// Rows one body may hold (default 100M). A Parquet file declaring more is refused
    /// before a page is decoded: a few kilobytes of RLE-coded nulls can declare billions.
    pub max_rows: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_line_bytes: 16 << 20,
            max_batch_bytes: 32 << 20,
            max_rows: 100_000_000,
        }
    }
}

fn too_long(what: &str, at: String, limit: usize) -> IngestError {
    IngestError::BadInput {
        location: at,
        message: format!("the {what} is longer than {limit} bytes (ingest.max_line_bytes)"),
    }
}

/// Why a line could not be read.
enum LineError {
    TooLong,
    Io(std::io::Error),
}

/// Reads one line into `line` (cleared first), stopping with an error once it would exceed
/// `limit` bytes; `Ok(false)` at the end of input.
fn read_line_bounded(
    r: &mut impl BufRead,
    line: &mut Vec<u8>,
    limit: usize,
) -> std::result::Result<bool, LineError> {
    line.clear();
    loop {
        let buf = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(LineError::Io(e)),
        };
        if buf.is_empty() {
            return Ok(!line.is_empty());
        }
        let (take, done) = match memchr::memchr(b'\n', buf) {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        // The newline itself does not count.
        if line.len() + take > limit + usize::from(done) {
            return Err(LineError::TooLong);
        }
        line.extend_from_slice(&buf[..take]);
        r.consume(take);
        if done {
            return Ok(true);
        }
    }
}

/// Decodes NDJSON from `r`, calling `sink` with each full batch. Blank lines are skipped.
pub fn decode_ndjson(
    r: impl Read,
    schema: &SegmentSchema,
    batch_rows: usize,
    limits: &DecodeLimits,
    sink: &mut dyn FnMut(RecordBatch) -> Result<()>,
) -> Result<usize> {
    let mut w = RowWriter::new(schema, batch_rows).with_max_bytes(limits.max_batch_bytes);
    let mut reader = std::io::BufReader::with_capacity(1 << 20, r);
    let mut line = Vec::new();
    let mut line_no = 0usize;
    let mut rows = 0usize;
    loop {
        match read_line_bounded(&mut reader, &mut line, limits.max_line_bytes) {
            Ok(false) => break,
            Ok(true) => {}
            Err(LineError::TooLong) => {
                return Err(too_long(
                    "line",
                    format!("line {}", line_no + 1),
                    limits.max_line_bytes,
                ))
            }
            Err(LineError::Io(e)) => return Err(IngestError::Io(e)),
        }
        line_no += 1;
        let trimmed = line.trim_ascii();
        if trimmed.is_empty() {
            continue;
        }
        let loc = || format!("line {line_no}");
        match w.push_json_bytes(trimmed, &loc) {
            Ok(_) => {}
            Err(JsonRowError::Row(e)) => return Err(e),
            Err(JsonRowError::Object(ObjectError::NotAnObject(_))) => {
                return Err(IngestError::BadInput {
                    location: loc(),
                    message: "expected a JSON object".into(),
                })
            }
            Err(JsonRowError::Object(ObjectError::Invalid(e))) => {
                return Err(IngestError::BadInput {
                    location: loc(),
                    message: format!("invalid JSON: {e}"),
                })
            }
        }
        rows += 1;
        w.flush(sink, false)?;
    }
    w.flush(sink, true)?;
    Ok(rows)
}

/// A CSV record longer than the limit, found by the reader below the CSV parser (which
/// reads ahead, so the record's own line is kept here).
#[derive(Debug, thiserror::Error)]
#[error("the CSV record at line {line} is longer than {limit} bytes")]
struct RecordTooLong {
    limit: usize,
    line: u64,
}

/// Counts the bytes of the current CSV record as they are read (a newline outside quotes
/// ends a record; `""` inside quotes toggles twice), and fails before an overlong record is
/// buffered by the CSV parser.
struct RecordGuard<R> {
    inner: R,
    limit: usize,
    in_record: usize,
    quoted: bool,
    /// Line of the next byte, and the line the current record started on (1-based).
    line: u64,
    record_line: u64,
}

impl<R: Read> Read for RecordGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        for &b in &buf[..n] {
            if self.in_record == 0 {
                self.record_line = self.line;
            }
            match b {
                b'"' => self.quoted = !self.quoted,
                b'\n' => {
                    self.line += 1;
                    if !self.quoted {
                        self.in_record = 0;
                        continue;
                    }
                }
                _ => {}
            }
            self.in_record += 1;
            if self.in_record > self.limit {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    RecordTooLong {
                        limit: self.limit,
                        line: self.record_line,
                    },
                ));
            }
        }
        Ok(n)
    }
}

/// The line of the overlong record, when a CSV error is the record guard's.
fn record_too_long(e: &csv::Error) -> Option<u64> {
    match e.kind() {
        csv::ErrorKind::Io(io) => io
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<RecordTooLong>())
            .map(|r| r.line),
        _ => None,
    }
}

/// Decodes CSV with a header row. Columns are matched by header name; spec columns missing
/// from the header are null; extra header columns are ignored.
pub fn decode_csv(
    r: impl Read,
    schema: &SegmentSchema,
    batch_rows: usize,
    limits: &DecodeLimits,
    sink: &mut dyn FnMut(RecordBatch) -> Result<()>,
) -> Result<usize> {
    let guarded = RecordGuard {
        inner: r,
        limit: limits.max_line_bytes,
        in_record: 0,
        quoted: false,
        line: 1,
        record_line: 1,
    };
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(guarded);
    let headers = rdr
        .headers()
        .map_err(|e| {
            if let Some(line) = record_too_long(&e) {
                return too_long("CSV record", format!("line {line}"), limits.max_line_bytes);
            }
            IngestError::BadInput {
                location: "line 1".into(),
                message: format!("cannot read the CSV header: {e}"),
            }
        })?
        .clone();
    let index: Vec<Option<usize>> = schema
        .columns
        .iter()
        .map(|c| headers.iter().position(|h| h.trim() == c.name))
        .collect();
    let mut w = RowWriter::new(schema, batch_rows).with_max_bytes(limits.max_batch_bytes);
    let mut rows = 0usize;
    let mut record = csv::StringRecord::new();
    loop {
        let line = rdr.position().line() + 1;
        match rdr.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) if record_too_long(&e).is_some() => {
                let at = record_too_long(&e).unwrap_or(line);
                return Err(too_long(
                    "CSV record",
                    format!("line {at}"),
                    limits.max_line_bytes,
                ));
            }
            Err(e) => {
                return Err(IngestError::BadInput {
                    location: format!("line {line}"),
                    message: format!("invalid CSV: {e}"),
                })
            }
        }
        let line = record.position().map(|p| p.line()).unwrap_or(line);
        let fields: Vec<Option<&str>> = index
            .iter()
            .map(|i| i.and_then(|i| record.get(i)))
            .collect();
        w.push_text(&fields, &|| format!("line {line}"))?;
        rows += 1;
        w.flush(sink, false)?;
    }
    w.flush(sink, true)?;
    Ok(rows)
}

/// Decodes a Parquet file (its bytes, in memory or mapped). Columns are matched by name and
/// cast to the spec's types; a value that does not convert is an error naming the row and
/// column.
///
/// With `keep_dictionaries`, a STRING column the segment builder encodes from a dictionary
/// ([`basalt_segment::keeps_dictionary`]) and whose every page in the file is
/// dictionary-encoded is given as [`basalt_segment::string_dictionary_type`] arrays (the
/// file's own dictionaries, so the builder hashes each distinct value once instead of each
/// row); every other column as the spec's type.
///
/// Batches hold at most `batch_rows` rows (and 65,536) and never span two row groups: a batch
/// that did would leave the reader two dictionaries to merge, which it does by turning the
/// batch's keys back into strings and hashing them again. Before any page is decoded, the
/// file is held to `limits` ([`super::parquet_bounds`]): a page declaring more than a page may
/// hold is an error, and a row group whose rows decode long gets fewer rows per batch.
pub fn decode_parquet(
    file: Bytes,
    schema: &SegmentSchema,
    batch_rows: usize,
    keep_dictionaries: bool,
    limits: &DecodeLimits,
    sink: &mut dyn FnMut(RecordBatch) -> Result<()>,
) -> Result<usize> {
    use parquet::arrow::arrow_reader::{
        ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder,
    };
    super::parquet_bounds::check_footer(&file, limits)?;
    let dictionary = basalt_segment::string_dictionary_type();
    let mut dictionary_columns: Vec<String> = Vec::new();
    let (meta, mask) = parquet_guard(|| {
        let mut meta = ArrowReaderMetadata::load(&file, ArrowReaderOptions::new())?;
        if keep_dictionaries {
            dictionary_columns = all_dictionary_columns(&meta, schema);
            if !dictionary_columns.is_empty() {
                let hinted = Arc::new(arrow::datatypes::Schema::new_with_metadata(
                    as_dictionaries(meta.schema().fields(), &dictionary_columns),
                    meta.schema().metadata().clone(),
                ));
                meta = ArrowReaderMetadata::try_new(
                    meta.metadata().clone(),
                    ArrowReaderOptions::new().with_schema(hinted),
                )?;
            }
        }
        // Only the spec's columns are decoded; the file's others cost nothing.
        let wanted: Vec<usize> = meta
            .schema()
            .fields()
            .iter()
            .enumerate()
            .filter(|(_, f)| schema.columns.iter().any(|c| c.name == *f.name()))
            .map(|(i, _)| i)
            .collect();
        let mask = parquet::arrow::ProjectionMask::roots(
            meta.metadata().file_metadata().schema_descr(),
            wanted,
        );
        Ok((meta, mask))
    })?;
    super::parquet_bounds::check_rows(meta.metadata(), limits)?;
    let group_rows = super::parquet_bounds::batch_rows_per_group(
        &file,
        meta.metadata(),
        &mask,
        &dictionary_columns,
        limits,
        batch_rows,
    )?;
    let mut readers = group_rows.into_iter().enumerate().map(|(group, rows)| {
        parquet_guard(|| {
            Ok(
                ParquetRecordBatchReaderBuilder::new_with_metadata(file.clone(), meta.clone())
                    .with_row_groups(vec![group])
                    .with_batch_size(rows)
                    .with_projection(mask.clone())
                    .build()?,
            )
        })
    });
    let mut reader = match readers.next() {
        Some(r) => Some(r?),
        None => None,
    };
    let target = ingest_schema(schema);
    let target = match dictionary_columns.is_empty() {
        true => target,
        false => Arc::new(arrow::datatypes::Schema::new(as_dictionaries(
            target.fields(),
            &dictionary_columns,
        ))),
    };
    let mut rows = 0usize;
    while let Some(r) = reader.as_mut() {
        let Some(batch) = parquet_guard(|| Ok(r.next().transpose()?))? else {
            reader = match readers.next() {
                Some(r) => Some(r?),
                None => None,
            };
            continue;
        };
        let mut cols: Vec<ArrayRef> = Vec::with_capacity(target.fields().len());
        for (c, f) in schema.columns.iter().zip(target.fields()) {
            let col = match batch.column_by_name(&c.name) {
                None => arrow::array::new_null_array(f.data_type(), batch.num_rows()),
                Some(a) if a.data_type() == &dictionary && f.data_type() == &dictionary => {
                    a.clone()
                }
                Some(a) => convert_column(a, f.data_type(), c.ty).map_err(|(row, m)| {
                    IngestError::BadRow {
                        location: format!("row {}", rows + row + 1),
                        column: c.name.clone(),
                        message: m,
                    }
                })?,
            };
            if let Some(row) = first_non_finite(&col) {
                return Err(IngestError::BadRow {
                    location: format!("row {}", rows + row + 1),
                    column: c.name.clone(),
                    message: super::NON_FINITE.into(),
                });
            }
            if !c.nullable && col.null_count() > 0 {
                let row = (0..col.len()).find(|&i| col.is_null(i)).unwrap_or(0);
                return Err(IngestError::BadRow {
                    location: format!("row {}", rows + row + 1),
                    column: c.name.clone(),
                    message: "is required but missing or null".into(),
                });
            }
            cols.push(col);
        }
        rows += batch.num_rows();
        sink(RecordBatch::try_new(target.clone(), cols)?)?;
    }
    Ok(rows)
}

/// `fields` with those named in `columns` typed [`basalt_segment::string_dictionary_type`].
fn as_dictionaries(
    fields: &arrow::datatypes::Fields,
    columns: &[String],
) -> Vec<arrow::datatypes::Field> {
    fields
        .iter()
        .map(|f| match columns.contains(f.name()) {
            true => f
                .as_ref()
                .clone()
                .with_data_type(basalt_segment::string_dictionary_type()),
            false => f.as_ref().clone(),
        })
        .collect()
}

/// The spec's STRING columns that [`basalt_segment::keeps_dictionary`] and that the file
/// stores as top-level strings with every data page of every row group dictionary-encoded
/// (known from the pages' encoding statistics; a file without them gives none).
fn all_dictionary_columns(
    meta: &parquet::arrow::arrow_reader::ArrowReaderMetadata,
    schema: &SegmentSchema,
) -> Vec<String> {
    use parquet::basic::Encoding;
    let md = meta.metadata();
    let leaves = md.file_metadata().schema_descr();
    let row_groups = md.row_groups();
    if row_groups.is_empty() {
        return Vec::new();
    }
    let file_fields = meta.schema();
    schema
        .columns
        .iter()
        .filter(|c| basalt_segment::keeps_dictionary(schema, c))
        .filter(|c| {
            file_fields
                .field_with_name(&c.name)
                .is_ok_and(|f| matches!(f.data_type(), DataType::Utf8 | DataType::LargeUtf8))
        })
        .filter_map(|c| {
            let leaf = (0..leaves.num_columns()).find(|&i| {
                let column = leaves.column(i);
                let parts = column.path().parts();
                parts.len() == 1 && parts[0] == c.name
            })?;
            row_groups
                .iter()
                .all(|rg| {
                    let chunk = rg.column(leaf);
                    chunk.dictionary_page_offset().is_some()
                        && chunk.page_encoding_stats_mask().is_some_and(|m| {
                            m.is_only(Encoding::RLE_DICTIONARY)
                                || m.is_only(Encoding::PLAIN_DICTIONARY)
                        })
                })
                .then(|| c.name.clone())
        })
        .collect()
}

thread_local! {
    static IN_PARQUET_READER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether this thread is inside a step of the Parquet reader, whose panics the decoder
/// turns into errors (panic hooks use it to tell those from real crashes; the fuzz target
/// does).
pub fn in_parquet_reader() -> bool {
    IN_PARQUET_READER.with(|f| f.get())
}

/// Runs a step of the Parquet reader, turning a panic inside it into an error: the reader
/// panics on some malformed files (e.g. a dictionary-encoded page without its dictionary,
/// found by the `parquet` fuzz target), and a client's file must not take a thread down.
pub(super) fn parquet_guard<T>(step: impl FnOnce() -> Result<T>) -> Result<T> {
    IN_PARQUET_READER.with(|f| f.set(true));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(step));
    IN_PARQUET_READER.with(|f| f.set(false));
    r.unwrap_or_else(|panic| {
        let why = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown failure".into());
        Err(IngestError::BadInput {
            location: "Parquet file".into(),
            message: format!("the file is malformed (the Parquet reader failed: {why})"),
        })
    })
}

/// The first row of a FLOAT or DOUBLE column holding NaN or an infinity.
fn first_non_finite(col: &ArrayRef) -> Option<usize> {
    use arrow::array::AsArray;
    use arrow::datatypes::{Float32Type, Float64Type};
    match col.data_type() {
        DataType::Float32 => {
            let a = col.as_primitive::<Float32Type>();
            (0..a.len()).find(|&i| a.is_valid(i) && !a.value(i).is_finite())
        }
        DataType::Float64 => {
            let a = col.as_primitive::<Float64Type>();
            (0..a.len()).find(|&i| a.is_valid(i) && !a.value(i).is_finite())
        }
        _ => None,
    }
}

/// Casts a column to `to`; on failure returns the first failing row (0-based) and a message.
fn convert_column(
    a: &ArrayRef,
    to: &DataType,
    ty: ColumnType,
) -> std::result::Result<ArrayRef, (usize, String)> {
    use arrow::compute::{cast_with_options, CastOptions};
    let from = a.data_type();
    let compatible = match ty {
        // An array column from a Parquet list of castable values.
        _ if matches!(to, DataType::List(_)) => {
            matches!(from, DataType::List(_) | DataType::LargeList(_))
        }
        ColumnType::String | ColumnType::Json => true,
        ColumnType::Boolean => matches!(
            from,
            DataType::Boolean | DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
        ),
        ColumnType::Date => matches!(
            from,
            DataType::Date32
                | DataType::Date64
                | DataType::Timestamp(_, _)
                | DataType::Utf8
                | DataType::LargeUtf8
                | DataType::Utf8View
        ),
        ColumnType::Timestamp => {
            from.is_integer()
                || matches!(
                    from,
                    DataType::Timestamp(_, _)
                        | DataType::Date32
                        | DataType::Date64
                        | DataType::Utf8
                        | DataType::LargeUtf8
                        | DataType::Utf8View
                )
        }
        _ => {
            from.is_numeric()
                || matches!(
                    from,
                    DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
                )
        }
    };
    if !compatible {
        return Err((
            0,
            format!("Parquet type {from} cannot hold {} values", ty.name()),
        ));
    }
    let strict = CastOptions {
        safe: false,
        ..Default::default()
    };
    let src = if matches!(from, DataType::Timestamp(_, Some(_))) {
        // Drop the zone: instants are kept as UTC epoch milliseconds.
        cast_with_options(
            a,
            &DataType::Timestamp(TimeUnit::Millisecond, None),
            &strict,
        )
        .map_err(|e| (0, e.to_string()))?
    } else {
        a.clone()
    };
    match cast_with_options(&src, to, &strict) {
        Ok(c) => Ok(c),
        Err(e) => {
            // Find the first row that fails, for the error message.
            let safe = cast_with_options(&src, to, &CastOptions::default())
                .map_err(|_| (0, e.to_string()))?;
            let row = (0..src.len())
                .find(|&i| !src.is_null(i) && safe.is_null(i))
                .unwrap_or(0);
            Err((row, format!("cannot convert to {}: {e}", ty.name())))
        }
    }
}
