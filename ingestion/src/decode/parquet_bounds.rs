//! Holds a Parquet file to the ingest limits before the reader decodes a page. In: the file's
//! bytes and metadata, the projected leaf columns, the columns read as dictionaries,
//! [`DecodeLimits`]. Out: for each row group, how many rows a batch may hold; or an error
//! naming the row group, the column and the limit.
//!
//! The body limit bounds the file, not what it decodes to. A few kilobytes of Parquet can
//! declare far more:
//! - a page header states its uncompressed size (up to 2 GiB). The reader allocates that much
//!   before decompressing, and zstd turns a few kilobytes into that many zeros;
//! - the GZIP, BROTLI and (Hadoop) LZ4 codecs read to the end of the stream, whatever the
//!   header declared;
//! - a dictionary-encoded page repeats its dictionary's values. One long value referenced by
//!   every row is copied once per row when the column is read as strings;
//! - DELTA_BYTE_ARRAY values share a prefix with the previous value, so every value can be as
//!   long as the page;
//! - repetition levels let one row hold a list of billions of elements in a few bytes.
//!
//! So, before the reader starts:
//! - every projected page header is read ([`super::parquet_pages`]), and a page declaring
//!   more than `max(max_batch_bytes, max_line_bytes)` uncompressed is refused;
//! - pages of the stream codecs are decompressed into a counter, bounded, and refused when
//!   they hold more than declared;
//! - each leaf column gets a bound on the bytes one row decodes to. Fixed-width values have
//!   their width; dictionary pages, the longest value of their dictionary (decompressed here
//!   after the size check); plain pages, their bytes over their values; DELTA_BYTE_ARRAY
//!   pages, their values' total from the prefix and suffix lengths (decompressed here). A
//!   repeated column's pages are decompressed to count the rows they start;
//! - a batch holds `max_batch_bytes` over the sum of its columns' bounds, at least one row.
//!
//! What a batch may then hold: at most `max_batch_bytes` of values, plus, per column, the page
//! being decoded and the rows of the two pages a batch ends in (each at most the page bound).

use std::io::Read;
use std::sync::Arc;

use bytes::Bytes;
use parquet::arrow::ProjectionMask;
use parquet::basic::{Compression, Encoding, Type as PhysicalType};
use parquet::column::page::{Page, PageReader};
use parquet::file::metadata::{ColumnChunkMetaData, ParquetMetaData};
use parquet::file::serialized_reader::SerializedPageReader;

use super::formats::parquet_guard;
use super::parquet_pages::{self as pages, PageHeader};
use super::parquet_thrift;
use super::DecodeLimits;
use crate::error::{IngestError, Result};

/// Bytes every value costs beside its own: an offset or a key, and its validity.
const PER_VALUE: u64 = 8;

/// Checks a Parquet file's footer before the `parquet` crate decodes it: at most
/// `max_batch_bytes` long, and read as the crate will read it
/// ([`parquet_thrift::check_footer`]): no list declaring more entries than it holds (the crate
/// reserves a list's declared length first: a 7.5 KB file found by the `parquet` fuzz target
/// asked for 180 GB), no field declared as another type than the crate reads it as, no schema
/// nested too deep. A file without Parquet's trailing magic is left to the reader, which says
/// why it is not one.
pub(super) fn check_footer(file: &[u8], limits: &DecodeLimits) -> Result<()> {
    let error = |message: String| IngestError::BadInput {
        location: "Parquet footer".into(),
        message,
    };
    let n = file.len();
    if n < 12 || &file[n - 4..] != b"PAR1" {
        return Ok(());
    }
    let len = u32::from_le_bytes(file[n - 8..n - 4].try_into().expect("4 bytes")) as usize;
    if len > limits.max_batch_bytes {
        return Err(error(format!(
            "the footer is {len} bytes, more than {} (the 32 MiB batch bound)",
            limits.max_batch_bytes
        )));
    }
    match n.checked_sub(8 + len) {
        Some(start) => parquet_thrift::check_footer(&file[start..n - 8])
            .map_err(|why| error(format!("the file is malformed: in its footer, {why}"))),
        None => Ok(()),
    }
}

/// Checks the rows a file's row groups declare against `limits.max_rows`, before anything is
/// decoded: the work of a file is its rows, not its bytes.
pub(super) fn check_rows(meta: &ParquetMetaData, limits: &DecodeLimits) -> Result<()> {
    let mut rows = 0u64;
    for (group, rg) in meta.row_groups().iter().enumerate() {
        let n = u64::try_from(rg.num_rows()).map_err(|_| IngestError::BadInput {
            location: format!("Parquet row group {group}"),
            message: format!("the file is malformed: {} rows", rg.num_rows()),
        })?;
        rows = rows.saturating_add(n);
    }
    if rows > limits.max_rows {
        return Err(IngestError::BadInput {
            location: "body".into(),
            message: format!(
                "the Parquet file declares {rows} rows, more than the {} one request may hold \
                 (ingest.max_rows_per_request)",
                limits.max_rows
            ),
        });
    }
    Ok(())
}

/// The rows per batch for each of `meta`'s row groups: `requested` (at most 65,536), fewer
/// where the projected columns could decode to more than `limits.max_batch_bytes` per batch.
/// Columns named in `as_dictionaries` are read as dictionary arrays, whose rows hold keys.
pub(super) fn batch_rows_per_group(
    file: &Bytes,
    meta: &ParquetMetaData,
    mask: &ProjectionMask,
    as_dictionaries: &[String],
    limits: &DecodeLimits,
    requested: usize,
) -> Result<Vec<usize>> {
    let requested = requested.clamp(1, 65536);
    let leaves = meta.file_metadata().schema_descr().num_columns();
    meta.row_groups()
        .iter()
        .enumerate()
        .map(|(group, rg)| {
            let mut per_row = 0u64;
            for leaf in (0..leaves.min(rg.num_columns())).filter(|&l| mask.leaf_included(l)) {
                let col = rg.column(leaf);
                let parts = col.column_descr().path().parts();
                let keys = parts.len() == 1 && as_dictionaries.contains(&parts[0]);
                let leaf = Leaf {
                    file,
                    group,
                    col,
                    keys,
                    limits,
                };
                per_row = per_row.saturating_add(leaf.bytes_per_row()?);
            }
            let fit = limits.max_batch_bytes as u64 / per_row.max(1);
            Ok((fit.min(requested as u64) as usize).max(1))
        })
        .collect()
}

/// One projected leaf column of one row group.
struct Leaf<'a> {
    file: &'a Bytes,
    group: usize,
    col: &'a ColumnChunkMetaData,
    /// Read as a dictionary array (rows hold keys, not values).
    keys: bool,
    limits: &'a DecodeLimits,
}

impl Leaf<'_> {
    fn error(&self, message: String) -> IngestError {
        IngestError::BadInput {
            location: format!(
                "Parquet row group {}, column {:?}",
                self.group,
                self.col.column_descr().path().string()
            ),
            message,
        }
    }

    /// The largest uncompressed page accepted.
    fn page_limit(&self) -> u64 {
        self.limits.max_batch_bytes.max(self.limits.max_line_bytes) as u64
    }

    /// A bound on the bytes one row of this column decodes to.
    ///
    /// A repeated column's pages are grouped into runs: a page starting a row, then pages
    /// starting none (a row spanning them). A run's bytes spread over the rows it starts, and
    /// a run holding more than a batch may is refused, since one row may hold it all.
    fn bytes_per_row(&self) -> Result<u64> {
        let data: Vec<PageHeader> = self
            .headers()?
            .into_iter()
            .filter(|h| matches!(h.kind, pages::DATA_PAGE | pages::DATA_PAGE_V2))
            .collect();
        let desc = self.col.column_descr();
        let width = match desc.physical_type() {
            PhysicalType::BOOLEAN => Some(1),
            PhysicalType::INT32 | PhysicalType::FLOAT => Some(4),
            PhysicalType::INT64 | PhysicalType::DOUBLE => Some(8),
            PhysicalType::INT96 => Some(12),
            // Every value (nulls too, in an Arrow array) takes the full width.
            PhysicalType::FIXED_LEN_BYTE_ARRAY => {
                let w = u64::try_from(desc.type_length()).unwrap_or(u64::MAX);
                if w > self.page_limit() {
                    return Err(self.error(format!(
                        "fixed-length values of {w} bytes are longer than a page may hold \
                         ({} bytes, ingest.max_line_bytes)",
                        self.page_limit()
                    )));
                }
                Some(w)
            }
            PhysicalType::BYTE_ARRAY => None,
        };
        let dictionary =
            |h: &PageHeader| matches!(h.encoding, pages::PLAIN_DICTIONARY | pages::RLE_DICTIONARY);
        let needs_dictionary = width.is_none() && !self.keys && data.iter().any(dictionary);
        let delta = width.is_none() && data.iter().any(|h| h.encoding == pages::DELTA_BYTE_ARRAY);
        let repeated = desc.max_rep_level() > 0;
        // The page reader decompresses what the headers cannot tell: a dictionary's longest
        // value, the rows a repeated column's pages start, the lengths of DELTA_BYTE_ARRAY
        // values. Every page's size has been checked by now.
        let mut reader = match needs_dictionary || delta || repeated {
            true => Some(parquet_guard(|| {
                Ok(SerializedPageReader::new(
                    Arc::new(self.file.clone()),
                    self.col,
                    usize::try_from(self.col.num_values()).unwrap_or(0),
                    None,
                )?)
            })?),
            false => None,
        };
        let mut longest = 0u64;
        if let (Some(r), true) = (reader.as_mut(), needs_dictionary) {
            longest = match parquet_guard(|| Ok(r.get_next_page()?))? {
                Some(Page::DictionaryPage {
                    buf, num_values, ..
                }) => pages::longest_byte_array(&buf, num_values as usize)
                    .map_or(buf.len() as u64, |l| l as u64),
                _ => {
                    return Err(self.error(
                        "the file is malformed: dictionary-encoded pages without a dictionary \
                         page"
                            .into(),
                    ))
                }
            };
        }
        let levels = Levels::of(desc);
        let (mut per_row, mut run_bytes, mut run_rows) = (PER_VALUE, 0u64, 0u64);
        for h in &data {
            // Only pages whose levels or lengths are read are decompressed; the others are
            // skipped by their headers. A reader opened for the dictionary alone is done.
            let wanted = repeated || (width.is_none() && h.encoding == pages::DELTA_BYTE_ARRAY);
            let page = match reader.as_mut() {
                Some(r) if repeated || delta => parquet_guard(|| {
                    while r.peek_next_page()?.is_some_and(|p| p.is_dict) {
                        r.skip_next_page()?;
                    }
                    Ok(match wanted {
                        true => r.get_next_page()?,
                        false => {
                            r.skip_next_page()?;
                            None
                        }
                    })
                })?,
                _ => None,
            };
            let (n, page_bytes) = (h.num_values as u64, h.uncompressed as u64);
            let values = match (h.encoding, width) {
                (pages::PLAIN_DICTIONARY | pages::RLE_DICTIONARY, _) if self.keys => 0,
                (_, Some(w)) => n.saturating_mul(w),
                (pages::PLAIN_DICTIONARY | pages::RLE_DICTIONARY, None) => {
                    n.saturating_mul(longest)
                }
                // The values are in the page.
                (pages::PLAIN | pages::DELTA_LENGTH_BYTE_ARRAY, None) => page_bytes,
                // Each value shares a prefix with the one before: counted from the lengths.
                (pages::DELTA_BYTE_ARRAY, None) => page
                    .as_ref()
                    .and_then(|p| levels.values(p))
                    .and_then(|v| pages::delta_byte_array_bytes(v, n as usize))
                    .unwrap_or(n.saturating_mul(page_bytes)),
                _ => n.saturating_mul(page_bytes),
            };
            let bytes = n.saturating_mul(PER_VALUE).saturating_add(values);
            if !repeated {
                // One level per row: a page of n values holds n rows.
                per_row = per_row.max(bytes.div_ceil(n.max(1)));
                continue;
            }
            let starts = page
                .as_ref()
                .and_then(|p| levels.rows_started(p))
                .ok_or_else(|| self.error("malformed repetition levels".into()))?
                as u64;
            if starts > 0 && run_rows > 0 {
                per_row = per_row.max(self.run(run_bytes, run_rows)?);
                (run_bytes, run_rows) = (0, 0);
            }
            run_bytes = run_bytes.saturating_add(bytes);
            run_rows += starts;
        }
        if repeated {
            per_row = per_row.max(self.run(run_bytes, run_rows)?);
        }
        Ok(per_row)
    }

    /// The bytes per row of a run of a repeated column's pages; an error when one row could
    /// hold more than a batch.
    fn run(&self, bytes: u64, rows: u64) -> Result<u64> {
        if bytes > self.limits.max_batch_bytes as u64 {
            return Err(self.error(format!(
                "a row may hold a list of up to {bytes} bytes decoded, more than a batch holds \
                 ({} bytes)",
                self.limits.max_batch_bytes
            )));
        }
        Ok(bytes.div_ceil(rows.max(1)))
    }

    /// Every page header of the column chunk, after checking each page's declared size (and,
    /// for the stream codecs, its real size).
    fn headers(&self) -> Result<Vec<PageHeader>> {
        let start = self
            .col
            .dictionary_page_offset()
            .unwrap_or(self.col.data_page_offset());
        let range = u64::try_from(start)
            .ok()
            .zip(u64::try_from(self.col.compressed_size()).ok())
            .and_then(|(s, l)| Some(usize::try_from(s).ok()?..usize::try_from(s + l).ok()?))
            .filter(|r| r.end <= self.file.len())
            .ok_or_else(|| self.error("the column chunk lies outside the file".into()))?;
        let mut out = Vec::new();
        let mut at = range.start;
        while at < range.end {
            let (h, len) = pages::page_header(&self.file[at..range.end]).ok_or_else(|| {
                self.error(format!("malformed page header at byte {at} of the file"))
            })?;
            if h.uncompressed as u64 > self.page_limit() {
                return Err(self.error(format!(
                    "a page declares {} bytes uncompressed, more than a page may hold \
                     ({} bytes, the larger of the 32 MiB batch bound and \
                     ingest.max_line_bytes)",
                    h.uncompressed,
                    self.page_limit()
                )));
            }
            let body = at + len;
            let end = body
                .checked_add(h.compressed as usize)
                .filter(|&e| e <= range.end)
                .ok_or_else(|| {
                    self.error(format!("the page at byte {at} runs past its column chunk"))
                })?;
            let levels = match h.kind {
                pages::DATA_PAGE_V2 => (h.levels_len as usize).min(end - body),
                _ => 0,
            };
            if h.is_compressed
                && !decompresses_within(
                    self.col.compression(),
                    &self.file[body + levels..end],
                    (h.uncompressed as usize).saturating_sub(levels),
                )
            {
                return Err(self.error(format!(
                    "the page at byte {at} decompresses to more than the {} bytes it declares",
                    h.uncompressed
                )));
            }
            out.push(h);
            at = end;
        }
        Ok(out)
    }
}

/// Whether `compressed` decompresses to at most `declared` bytes with the codecs whose
/// reader reads to the end of the stream (GZIP, BROTLI, and LZ4, whose reader falls back to
/// the LZ4 frame format). The others decompress into a buffer of the declared size. A stream
/// the codec cannot read counts as within: the reader reports it.
fn decompresses_within(codec: Compression, compressed: &[u8], declared: usize) -> bool {
    let stream: Box<dyn Read + '_> = match codec {
        Compression::GZIP(_) => Box::new(flate2::read::MultiGzDecoder::new(compressed)),
        Compression::BROTLI(_) => Box::new(brotli::Decompressor::new(compressed, 4096)),
        Compression::LZ4 => Box::new(lz4_flex::frame::FrameDecoder::new(compressed)),
        _ => return true,
    };
    std::io::copy(&mut stream.take(declared as u64 + 1), &mut std::io::sink())
        .map_or(true, |n| n <= declared as u64)
}

/// Where a column's level sections end, to find a page's repetition levels and values.
struct Levels {
    rep_width: u32,
    def_width: u32,
}

impl Levels {
    fn of(desc: &parquet::schema::types::ColumnDescriptor) -> Levels {
        let width = |max: i16| 16 - (max.max(0) as u16).leading_zeros();
        Levels {
            rep_width: width(desc.max_rep_level()),
            def_width: width(desc.max_def_level()),
        }
    }

    /// The length of a v1 page's level section at the start of `buf`: RLE levels carry a
    /// 4-byte length; the deprecated BIT_PACKED ones take `n` values of `width` bits.
    fn v1_section(buf: &[u8], encoding: Encoding, width: u32, n: usize) -> Option<usize> {
        match (width, encoding) {
            (0, _) => Some(0),
            #[allow(deprecated)]
            (_, Encoding::BIT_PACKED) => n.checked_mul(width as usize).map(|b| b.div_ceil(8)),
            _ => {
                let len = u32::from_le_bytes(buf.get(..4)?.try_into().ok()?) as usize;
                len.checked_add(4)
            }
        }
    }

    /// A decompressed data page's repetition levels and values (after its levels).
    fn split<'p>(&self, page: &'p Page) -> Option<Parts<'p>> {
        match page {
            Page::DataPage {
                buf,
                num_values,
                def_level_encoding,
                rep_level_encoding,
                ..
            } => {
                let n = *num_values as usize;
                let rep_len = Self::v1_section(buf, *rep_level_encoding, self.rep_width, n)?;
                #[allow(deprecated)]
                let bit_packed = *rep_level_encoding == Encoding::BIT_PACKED;
                let rest = buf.get(rep_len..)?;
                let def_len = Self::v1_section(rest, *def_level_encoding, self.def_width, n)?;
                Some(Parts {
                    rep: match (self.rep_width, bit_packed) {
                        (0, _) | (_, true) => buf.get(..rep_len)?,
                        _ => buf.get(4..rep_len)?,
                    },
                    bit_packed,
                    n,
                    values: rest.get(def_len..)?,
                })
            }
            Page::DataPageV2 {
                buf,
                num_values,
                def_levels_byte_len,
                rep_levels_byte_len,
                ..
            } => {
                let rep_len = *rep_levels_byte_len as usize;
                Some(Parts {
                    rep: buf.get(..rep_len)?,
                    bit_packed: false,
                    n: *num_values as usize,
                    values: buf.get(rep_len.checked_add(*def_levels_byte_len as usize)?..)?,
                })
            }
            Page::DictionaryPage { .. } => None,
        }
    }

    /// A decompressed data page's value bytes.
    fn values<'p>(&self, page: &'p Page) -> Option<&'p [u8]> {
        self.split(page).map(|p| p.values)
    }

    /// How many rows a decompressed data page starts (its repetition levels that are 0);
    /// `None` when its levels are malformed.
    fn rows_started(&self, page: &Page) -> Option<usize> {
        let p = self.split(page)?;
        match p.bit_packed {
            true => pages::count_zero_bit_packed(p.rep, self.rep_width, p.n),
            false => pages::count_zero_levels(p.rep, self.rep_width, p.n),
        }
    }
}

/// A data page's parts, as [`Levels::split`] finds them.
struct Parts<'p> {
    rep: &'p [u8],
    /// Repetition levels in the deprecated BIT_PACKED encoding.
    bit_packed: bool,
    /// Levels in the page.
    n: usize,
    values: &'p [u8],
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Int64Array, ListArray, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use arrow::record_batch::RecordBatch;
    use basalt_segment::{ColumnDef, ColumnType, SegmentSchema};
    use bytes::Bytes;
    use parquet::basic::{Compression, Encoding};
    use parquet::column::page::{Page, PageReader};
    use parquet::file::properties::{EnabledStatistics, WriterProperties, WriterVersion};
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::file::serialized_reader::SerializedPageReader;

    use super::super::parquet_pages::{self as pages};
    use super::super::{decode_parquet, DecodeLimits};
    use crate::error::IngestError;

    const DICTIONARY_PAGE: i32 = 2;

    fn write(batch: &RecordBatch, props: WriterProperties) -> Bytes {
        let mut out = Vec::new();
        let mut w =
            parquet::arrow::ArrowWriter::try_new(&mut out, batch.schema(), Some(props)).unwrap();
        w.write(batch).unwrap();
        w.close().unwrap();
        out.into()
    }

    fn schema(columns: Vec<ColumnDef>) -> SegmentSchema {
        let mut ts = ColumnDef::new("ts", ColumnType::Timestamp);
        ts.nullable = false;
        let mut all = vec![ts];
        all.extend(columns);
        SegmentSchema {
            columns: all,
            time_column: Some("ts".into()),
            star_trees: Vec::new(),
        }
    }

    fn batch(columns: Vec<(&str, ArrayRef)>) -> RecordBatch {
        let n = columns[0].1.len();
        let mut fields = vec![Field::new("ts", DataType::Int64, false)];
        let mut arrays: Vec<ArrayRef> = vec![Arc::new(Int64Array::from_iter_values(0..n as i64))];
        for (name, a) in columns {
            fields.push(Field::new(name, a.data_type().clone(), true));
            arrays.push(a);
        }
        RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).unwrap()
    }

    /// Lists of 0..7 strings, some null, for a repeated column.
    fn lists(n: usize) -> ArrayRef {
        let mut b = arrow::array::ListBuilder::new(arrow::array::StringBuilder::new());
        for i in 0..n {
            if i % 13 == 5 {
                b.append_null();
                continue;
            }
            for k in 0..(i * 7 % 8) {
                b.values().append_value(format!("t{}", (i + k) % 50));
            }
            b.append(true);
        }
        Arc::new(b.finish())
    }

    fn decode(
        file: &Bytes,
        schema: &SegmentSchema,
        keep: bool,
        limits: &DecodeLimits,
    ) -> crate::error::Result<Vec<RecordBatch>> {
        let mut out = Vec::new();
        decode_parquet(file.clone(), schema, 65536, keep, limits, &mut |b| {
            out.push(b);
            Ok(())
        })?;
        Ok(out)
    }

    /// The headers read here are the pages the `parquet` reader reads, in every page version,
    /// codec and encoding its writer makes (page statistics included, which the header reader
    /// skips); a repeated column's pages start as many rows as its row group holds.
    #[test]
    fn page_headers_read_as_the_parquet_reader_reads_them() {
        let n = 5000usize;
        let mut delta_checked = 0;
        let b = batch(vec![
            (
                "s",
                Arc::new(StringArray::from_iter(
                    (0..n).map(|i| (i % 9 != 0).then(|| format!("v{}", i * 7919 % 3000))),
                )),
            ),
            ("tags", lists(n)),
        ]);
        let codecs = [
            Compression::UNCOMPRESSED,
            Compression::SNAPPY,
            Compression::ZSTD(Default::default()),
            Compression::GZIP(Default::default()),
            Compression::BROTLI(Default::default()),
            Compression::LZ4_RAW,
            Compression::LZ4,
        ];
        for codec in codecs {
            for version in [WriterVersion::PARQUET_1_0, WriterVersion::PARQUET_2_0] {
                for dictionary in [true, false] {
                    let props = WriterProperties::builder()
                        .set_compression(codec)
                        .set_writer_version(version)
                        .set_dictionary_enabled(dictionary)
                        .set_statistics_enabled(EnabledStatistics::Page)
                        .set_data_page_row_count_limit(700)
                        .set_write_batch_size(100)
                        .set_max_row_group_row_count(Some(2000))
                        .build();
                    let file = write(&b, props);
                    let case = format!("{codec:?} {version:?} dictionary {dictionary}");
                    let reader = SerializedFileReader::new(file.clone()).unwrap();
                    let meta = reader.metadata();
                    let mut rg_start = 0usize;
                    for rg in meta.row_groups() {
                        for col in rg.columns() {
                            let (start, len) = col.byte_range();
                            let (start, end) = (start as usize, (start + len) as usize);
                            let mut at = start;
                            let mut mine = Vec::new();
                            while at < end {
                                let (h, hl) = pages::page_header(&file[at..end]).unwrap();
                                assert!(
                                    super::decompresses_within(
                                        col.compression(),
                                        &file[at
                                            + hl
                                            + (h.kind == pages::DATA_PAGE_V2) as usize
                                                * h.levels_len as usize
                                            ..at + hl + h.compressed as usize],
                                        h.uncompressed as usize
                                            - (h.kind == pages::DATA_PAGE_V2) as usize
                                                * h.levels_len as usize,
                                    ) || !h.is_compressed
                                );
                                mine.push(h);
                                at += hl + h.compressed as usize;
                            }
                            assert_eq!(at, end, "{case}");
                            let mut theirs = SerializedPageReader::new(
                                Arc::new(file.clone()),
                                col,
                                rg.num_rows() as usize,
                                None,
                            )
                            .unwrap();
                            let repeated = col.column_descr().max_rep_level() > 0;
                            let levels = super::Levels::of(col.column_descr());
                            let (mut rows, mut delta_bytes, mut delta_pages) = (0, 0, 0);
                            for h in &mine {
                                let page = theirs.get_next_page().unwrap().unwrap();
                                let (kind, values, encoding) = match &page {
                                    Page::DataPage {
                                        num_values,
                                        encoding,
                                        ..
                                    } => (pages::DATA_PAGE, *num_values, *encoding),
                                    Page::DataPageV2 {
                                        num_values,
                                        encoding,
                                        ..
                                    } => (pages::DATA_PAGE_V2, *num_values, *encoding),
                                    Page::DictionaryPage {
                                        num_values,
                                        encoding,
                                        ..
                                    } => (DICTIONARY_PAGE, *num_values, *encoding),
                                };
                                assert_eq!(
                                    (h.kind, h.num_values as u32, h.encoding),
                                    (kind, values, encoding as i32),
                                    "{case}"
                                );
                                if repeated && kind != DICTIONARY_PAGE {
                                    rows += levels.rows_started(&page).expect(&case);
                                }
                                if h.encoding == pages::DELTA_BYTE_ARRAY {
                                    let values = levels.values(&page).expect(&case);
                                    delta_bytes += pages::delta_byte_array_bytes(
                                        values,
                                        h.num_values as usize,
                                    )
                                    .expect(&case);
                                    delta_pages += 1;
                                }
                            }
                            if delta_pages > 0 {
                                // The lengths add up to the row group's values.
                                let first = rg_start;
                                let want: usize = (first..first + rg.num_rows() as usize)
                                    .map(|i| match repeated {
                                        false if i % 9 != 0 => {
                                            format!("v{}", i * 7919 % 3000).len()
                                        }
                                        false => 0,
                                        true if i % 13 == 5 => 0,
                                        true => (0..(i * 7 % 8))
                                            .map(|k| format!("t{}", (i + k) % 50).len())
                                            .sum(),
                                    })
                                    .sum();
                                assert_eq!(delta_bytes, want as u64, "{case}");
                                delta_checked += 1;
                            }
                            assert!(theirs.get_next_page().unwrap().is_none(), "{case}");
                            if repeated {
                                assert_eq!(rows as i64, rg.num_rows(), "{case}");
                            }
                        }
                        rg_start += rg.num_rows() as usize;
                    }
                    // And the decoder reads it with full batches.
                    let s = schema(vec![
                        ColumnDef::new("s", ColumnType::String),
                        ColumnDef::multi_value("tags", ColumnType::String),
                    ]);
                    let got = decode(&file, &s, false, &Default::default()).unwrap();
                    let sizes: Vec<usize> = got.iter().map(|b| b.num_rows()).collect();
                    assert_eq!(sizes, [2000, 2000, 1000], "{case}");
                }
            }
        }
        // Version 2 pages without a dictionary store strings as DELTA_BYTE_ARRAY.
        assert!(delta_checked > 0);
        // The encodings checked are the ones the bounds treat apart.
        assert_eq!(Encoding::RLE_DICTIONARY as i32, pages::RLE_DICTIONARY);
        assert_eq!(Encoding::PLAIN_DICTIONARY as i32, pages::PLAIN_DICTIONARY);
        assert_eq!(
            Encoding::DELTA_LENGTH_BYTE_ARRAY as i32,
            pages::DELTA_LENGTH_BYTE_ARRAY
        );
    }

    /// A dictionary holding one long value, referenced by every row: a small file whose rows
    /// decode to 256 KiB each. Read as strings, a batch holds what the batch bound allows
    /// (4 rows of 1 MiB), not the 400 rows asked for (100 MiB); read as a dictionary, the
    /// rows hold keys and the batch is whole. The same with values sharing a long prefix
    /// (DELTA_BYTE_ARRAY).
    #[test]
    fn a_long_dictionary_value_gets_batches_within_the_bound() {
        let long = "x".repeat(256 << 10);
        let rows = 400;
        let b = batch(vec![(
            "s",
            Arc::new(StringArray::from_iter_values(
                (0..rows).map(|_| long.as_str()),
            )),
        )]);
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(Default::default()))
            .set_dictionary_page_size_limit(1 << 20)
            .build();
        let file = write(&b, props);
        let limits = DecodeLimits {
            max_line_bytes: 1 << 20,
            max_batch_bytes: 1 << 20,
            ..DecodeLimits::default()
        };
        // No index: the builder reads this column as strings.
        let plain = schema(vec![ColumnDef::new("s", ColumnType::String)]);
        let bounded = |file: &Bytes| {
            assert!(file.len() < 64 << 10, "{} bytes", file.len());
            let got = decode(file, &plain, false, &limits).unwrap();
            assert_eq!(got.iter().map(|b| b.num_rows()).sum::<usize>(), rows);
            let most = got.iter().map(|b| b.num_rows()).max().unwrap();
            assert!(most <= 4, "{most} rows");
            assert!(got
                .iter()
                .all(|b| b.get_array_memory_size() <= (1 << 20) + (64 << 10)));
        };
        bounded(&file);
        // With an inverted index it stays a dictionary: one batch.
        let indexed =
            schema(vec![ColumnDef::new("s", ColumnType::String)
                .with_index(basalt_segment::IndexKind::Inverted)]);
        let got = decode(&file, &indexed, true, &limits).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].num_rows(), rows);

        // Distinct values sharing the long prefix, as DELTA_BYTE_ARRAY (version 2 pages, no
        // dictionary): each value after the first is a few bytes in the page.
        let b = batch(vec![(
            "s",
            Arc::new(StringArray::from_iter_values(
                (0..rows).map(|i| format!("{long}{i}")),
            )),
        )]);
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(Default::default()))
            .set_writer_version(WriterVersion::PARQUET_2_0)
            .set_dictionary_enabled(false)
            .build();
        bounded(&write(&b, props));
    }

    fn bad_input(r: crate::error::Result<Vec<RecordBatch>>) -> String {
        match r {
            Err(IngestError::BadInput { location, message }) => format!("{location}: {message}"),
            Err(e) => panic!("not a bad-input error: {e}"),
            Ok(_) => panic!("decoded"),
        }
    }

    /// A page that declares more than a page may hold is refused before it is decompressed,
    /// naming the row group, the column and the limit.
    #[test]
    fn a_page_larger_than_a_page_may_hold_is_refused() {
        let b = batch(vec![(
            "s",
            Arc::new(StringArray::from_iter_values(["y".repeat(300 << 10)])),
        )]);
        let file = write(
            &b,
            WriterProperties::builder()
                .set_compression(Compression::ZSTD(Default::default()))
                .build(),
        );
        let limits = DecodeLimits {
            max_line_bytes: 4096,
            max_batch_bytes: 256 << 10,
            ..DecodeLimits::default()
        };
        let s = schema(vec![ColumnDef::new("s", ColumnType::String)]);
        let e = bad_input(decode(&file, &s, false, &limits));
        assert!(
            e.contains("row group 0")
                && e.contains("\"s\"")
                && e.contains("a page declares")
                && e.contains("262144"),
            "{e}"
        );
        // Within the default limits the same file decodes.
        assert_eq!(
            decode(&file, &s, false, &Default::default()).unwrap().len(),
            1
        );
    }

    /// A few kilobytes declaring millions of rows (a constant and nulls, run-length coded):
    /// refused by its declared rows before a page is decoded, beyond the request's limit.
    #[test]
    fn a_file_declaring_more_rows_than_a_request_may_hold_is_refused() {
        let n = 2_000_000;
        let b = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("ts", DataType::Int64, false),
                Field::new("v", DataType::Int64, true),
            ])),
            vec![
                Arc::new(Int64Array::from_value(0, n)),
                Arc::new(Int64Array::new_null(n)),
            ],
        )
        .unwrap();
        let file = write(&b, WriterProperties::builder().build());
        assert!(file.len() < 20_000, "{} bytes", file.len());
        let s = schema(vec![ColumnDef::new("v", ColumnType::Long)]);
        let limits = DecodeLimits {
            max_rows: 1_999_999,
            ..DecodeLimits::default()
        };
        let e = bad_input(decode(&file, &s, false, &limits));
        assert!(
            e.contains("declares 2000000 rows") && e.contains("ingest.max_rows_per_request"),
            "{e}"
        );
        let limits = DecodeLimits {
            max_rows: 2_000_000,
            ..DecodeLimits::default()
        };
        let rows: usize = decode(&file, &s, false, &limits)
            .unwrap()
            .iter()
            .map(|b| b.num_rows())
            .sum();
        assert_eq!(rows, n);
    }

    /// A GZIP page whose header declares fewer bytes than its stream holds is refused before
    /// the reader (which reads a GZIP stream to its end) decompresses it.
    #[test]
    fn a_stream_longer_than_its_page_declares_is_refused() {
        let b = batch(vec![(
            "s",
            Arc::new(StringArray::from_iter_values(
                (0..4000).map(|i| format!("value {i:06}")),
            )),
        )]);
        let props = WriterProperties::builder()
            .set_compression(Compression::GZIP(Default::default()))
            .set_dictionary_enabled(false)
            .build();
        let mut file = write(&b, props).to_vec();
        // Find the string column's first page and halve its declared size: the same varint
        // length, so nothing else moves.
        let reader = SerializedFileReader::new(Bytes::from(file.clone())).unwrap();
        let col = reader.metadata().row_group(0).column(1).clone();
        let at = col.byte_range().0 as usize;
        let (h, _) = pages::page_header(&file[at..]).unwrap();
        assert!(h.uncompressed >= 1 << 14 && h.uncompressed < 1 << 20);
        let varint = |v: i32| {
            let mut z = ((v << 1) ^ (v >> 31)) as u32;
            let mut out = Vec::new();
            while z >= 0x80 {
                out.push(z as u8 | 0x80);
                z >>= 7;
            }
            out.push(z as u8);
            out
        };
        let old = varint(h.uncompressed);
        let new = varint(h.uncompressed / 2);
        assert_eq!(old.len(), new.len());
        let pos = at
            + file[at..at + 16]
                .windows(old.len())
                .position(|w| w == old)
                .unwrap();
        file[pos..pos + old.len()].copy_from_slice(&new);
        let s = schema(vec![ColumnDef::new("s", ColumnType::String)]);
        let e = bad_input(decode(&Bytes::from(file), &s, false, &Default::default()));
        assert!(
            e.contains("\"s\"") && e.contains("decompresses to more than"),
            "{e}"
        );
    }

    /// A row holding a list of two million nulls is a few bytes of levels; it decodes to more
    /// than a batch may hold (8 MiB here) and is refused. Many short lists are not.
    #[test]
    fn a_row_with_a_list_longer_than_a_batch_is_refused() {
        let n = 2_000_000;
        let values = StringArray::from_iter((0..n).map(|_| None::<&str>));
        let one_row = ListArray::new(
            Arc::new(Field::new("item", DataType::Utf8, true)),
            arrow::buffer::OffsetBuffer::from_lengths([n]),
            Arc::new(values),
            None,
        );
        let b = batch(vec![("tags", Arc::new(one_row))]);
        let file = write(
            &b,
            WriterProperties::builder()
                .set_compression(Compression::ZSTD(Default::default()))
                .build(),
        );
        assert!(file.len() < 64 << 10, "{} bytes", file.len());
        let s = schema(vec![ColumnDef::multi_value("tags", ColumnType::String)]);
        let limits = DecodeLimits {
            max_line_bytes: 1 << 20,
            max_batch_bytes: 8 << 20,
            ..DecodeLimits::default()
        };
        let e = bad_input(decode(&file, &s, false, &limits));
        assert!(
            e.contains("\"tags.list.item\"") && e.contains("a row may hold a list"),
            "{e}"
        );
        let many = batch(vec![("tags", lists(20_000))]);
        let file = write(&many, WriterProperties::builder().build());
        let got = decode(&file, &s, false, &limits).unwrap();
        assert_eq!(
            got.iter().map(|b| b.num_rows()).collect::<Vec<_>>(),
            [20_000]
        );
    }

    /// Small files of every shape the bounds read: version 1 and 2 pages, dictionaries,
    /// DELTA_BYTE_ARRAY, lists.
    fn shapes() -> Vec<Bytes> {
        let n = 300;
        let b = batch(vec![
            (
                "s",
                Arc::new(StringArray::from_iter(
                    (0..n).map(|i| (i % 9 != 0).then(|| format!("v{}", i * 7919 % 100))),
                )),
            ),
            ("tags", lists(n)),
        ]);
        let mut out = Vec::new();
        for version in [WriterVersion::PARQUET_1_0, WriterVersion::PARQUET_2_0] {
            for dictionary in [true, false] {
                let props = WriterProperties::builder()
                    .set_writer_version(version)
                    .set_dictionary_enabled(dictionary)
                    .set_data_page_row_count_limit(100)
                    .set_write_batch_size(50)
                    .build();
                out.push(write(&b, props));
            }
        }
        out
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(400))]
        /// A valid file with bytes changed: the decoder answers rows or an error; nothing
        /// here panics (the `parquet` reader's own panics are turned into errors).
        #[test]
        fn damaged_files_are_errors_not_panics(
            shape in 0usize..4,
            changes in proptest::collection::vec((0.0f64..1.0, proptest::prelude::any::<u8>()), 1..6),
        ) {
            let mut file = shapes()[shape].to_vec();
            // Change bytes before the footer: pages and their headers.
            let body = file.len() - 8 - u32::from_le_bytes(file[file.len() - 8..file.len() - 4].try_into().unwrap()) as usize;
            for (at, byte) in changes {
                let i = 4 + (at * (body - 4) as f64) as usize;
                file[i] = byte;
            }
            let s = schema(vec![
                ColumnDef::new("s", ColumnType::String),
                ColumnDef::multi_value("tags", ColumnType::String),
            ]);
            let limits = DecodeLimits { max_line_bytes: 4096, max_batch_bytes: 64 << 10, ..DecodeLimits::default() };
            let file = Bytes::from(file);
            let r = std::panic::catch_unwind(|| decode(&file, &s, false, &limits).map(|b| b.len()));
            proptest::prop_assert!(r.is_ok(), "panicked");
        }

        /// Any bytes: the header reader answers or declines, never panics or reads past them.
        #[test]
        fn page_header_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            if let Some((_, len)) = pages::page_header(&bytes) {
                proptest::prop_assert!(len <= bytes.len());
            }
            let _ = pages::count_zero_levels(&bytes, 3, 100);
            let _ = pages::count_zero_bit_packed(&bytes, 2, 100);
            let _ = pages::longest_byte_array(&bytes, 5);
        }
    }
}
