//! Reads a segment file. In: the file's bytes (an mmap or a buffer). Out: column metadata,
//! dictionaries, index bitmaps, decoded blocks, and Arrow arrays for chosen doc ids.
//!
//! Opening checks the header, trailer and footer checksum; each section is bounds-checked and
//! checksummed when first read. Corrupt or truncated input is a [`SegmentError`], never a panic.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use arrow::array::BooleanBufferBuilder;
use arrow::array::{
    Array, ArrayRef, BooleanArray, Date32Array, Decimal128Array, DictionaryArray, Float32Array,
    Float64Array, Int32Array, Int64Array, StringArray, TimestampMillisecondArray, UInt32Array,
};
use arrow::buffer::{Buffer, NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{Int32Type, SchemaRef};
use arrow::record_batch::{RecordBatch, RecordBatchOptions};
use bytes::Bytes;
use roaring::RoaringBitmap;

use crate::bitpack;
use crate::bloom::Bloom;
use crate::error::{corrupt, Result, SegmentError};
use crate::layout::{read_footer, read_section, ColumnMeta, Encoding, Footer, SectionRef};
use crate::postings;
use crate::string_block::length_at;
use crate::types::{ColumnDef, ColumnType, Physical};

/// A column's sorted dictionary, decoded.
#[derive(Debug)]
pub enum Dictionary {
    Str(StringArray),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

impl Dictionary {
    pub fn len(&self) -> usize {
        match self {
            Dictionary::Str(a) => a.len(),
            Dictionary::I64(v) => v.len(),
            Dictionary::F64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Positions in `docs` (ascending doc ids) of the docs in `nulls`: by walking the nulls
/// between the first and last doc when the docs are dense there, by probing each doc when
/// they are sparse.
pub fn null_positions(nulls: &RoaringBitmap, docs: &[u32]) -> Vec<usize> {
    let (Some(&first), Some(&last)) = (docs.first(), docs.last()) else {
        return Vec::new();
    };
    let span = (last - first) as usize + 1;
    let contiguous = span == docs.len();
    // Few docs spread far apart: probing each is cheaper than walking every null between.
    if !contiguous && docs.len() * 16 < span {
        return docs
            .iter()
            .enumerate()
            .filter(|(_, d)| nulls.contains(**d))
            .map(|(i, _)| i)
            .collect();
    }
    let mut out = Vec::new();
    if contiguous {
        out.extend(nulls.range(first..=last).map(|d| (d - first) as usize));
        return out;
    }
    // Both ascending: one merge walk (docs are at least 1/16 of the span here, so walking
    // them costs no more than walking the nulls).
    let mut j = 0;
    for d in nulls.range(first..=last) {
        while docs[j] < d {
            j += 1;
        }
        if docs[j] == d {
            out.push(j);
            j += 1;
            if j == docs.len() {
                break;
            }
        }
    }
    out
}

/// The validity of `docs` (ascending doc ids) given a column's null docs, or `None` when
/// none of them is null. Docs that are one contiguous run (a block, a slice) are read from
/// the runs of nulls, each appended whole: a mostly-null column (a revenue set on a few
/// events) costs one step per run of nulls instead of one per null doc.
pub fn validity(nulls: &RoaringBitmap, docs: &[u32]) -> Option<NullBuffer> {
    let (Some(&first), Some(&last)) = (docs.first(), docs.last()) else {
        return None;
    };
    if nulls.is_empty() {
        return None;
    }
    let mut valid = BooleanBufferBuilder::new(docs.len());
    if (last - first) as usize + 1 == docs.len() {
        let mut runs = nulls.range(first..=last);
        // Next doc to append, as u64: a run may end at u32::MAX.
        let mut at = first as u64;
        while let Some(run) = runs.next_range() {
            let (start, end) = (*run.start() as u64, *run.end() as u64);
            valid.append_n((start - at) as usize, true);
            valid.append_n((end - start + 1) as usize, false);
            at = end + 1;
        }
        if at == first as u64 {
            return None;
        }
        valid.append_n((last as u64 + 1 - at) as usize, true);
    } else {
        let positions = null_positions(nulls, docs);
        if positions.is_empty() {
            return None;
        }
        valid.append_n(docs.len(), true);
        for p in positions {
            valid.set_bit(p, false);
        }
    }
    Some(NullBuffer::new(valid.finish()))
}

/// Values of some docs of one column, whichever kind the blocks hold.
#[derive(Default)]
struct Gathered {
    ids: Vec<u32>,
    ints: Vec<i64>,
    floats: Vec<f64>,
    /// Raw string columns: the picked rows of each block read.
    strs: Vec<StringArray>,
}

/// Decoded values of one block: dictionary ids or raw values.
pub enum BlockValues {
    Ids(Vec<u32>),
    I64(Vec<i64>),
    F64(Vec<f64>),
    /// Raw strings (format 6); null rows hold empty strings.
    Strs(StringArray),
    /// Multi-value: per doc its value count, then every value's id.
    Multi {
        counts: Vec<u32>,
        ids: Vec<u32>,
    },
}

impl BlockValues {
    /// Rows of the block (docs, for a multi-value block).
    pub fn len(&self) -> usize {
        match self {
            BlockValues::Ids(v) => v.len(),
            BlockValues::I64(v) => v.len(),
            BlockValues::F64(v) => v.len(),
            BlockValues::Strs(v) => v.len(),
            BlockValues::Multi { counts, .. } => counts.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values of `docs` (ascending and distinct, each at least `start` and in the block
    /// that starts there), moved to the front in place: the `k`th doc's row is at or after
    /// `k`, so no value is overwritten before it is read. Multi-value blocks are returned
    /// whole.
    fn keep(self, docs: &[u32], start: u32) -> BlockValues {
        fn compact<T: Copy>(mut v: Vec<T>, docs: &[u32], start: u32) -> Vec<T> {
            for (k, &d) in docs.iter().enumerate() {
                v[k] = v[(d - start) as usize];
            }
            v.truncate(docs.len());
            v
        }
        match self {
            BlockValues::Ids(v) => BlockValues::Ids(compact(v, docs, start)),
            BlockValues::I64(v) => BlockValues::I64(compact(v, docs, start)),
            BlockValues::F64(v) => BlockValues::F64(compact(v, docs, start)),
            BlockValues::Strs(v) => BlockValues::Strs(StringArray::from_iter_values(
                docs.iter().map(|&d| v.value((d - start) as usize)),
            )),
            multi @ BlockValues::Multi { .. } => multi,
        }
    }
}

/// Offsets into an uncompressed section of serialized roaring bitmaps.
#[derive(Debug)]
pub(crate) struct BitmapTable {
    base: usize,
    offsets: Vec<u64>,
}

#[derive(Default)]
struct ColumnCache {
    dictionary: OnceLock<Arc<Dictionary>>,
    nulls: OnceLock<Arc<RoaringBitmap>>,
    inverted: OnceLock<Arc<BitmapTable>>,
    range: OnceLock<Arc<BitmapTable>>,
    sorted_runs: OnceLock<Arc<Vec<u32>>>,
    bloom: OnceLock<Arc<Bloom>>,
    text: OnceLock<Arc<crate::text::TextIndex>>,
    json: OnceLock<Arc<crate::json::JsonIndex>>,
}

/// An open segment.
pub struct SegmentReader {
    bytes: Bytes,
    footer: Footer,
    caches: Vec<ColumnCache>,
    arrow_schema: SchemaRef,
    /// Per column and block: its checksum was found right. The bytes never change while the
    /// reader holds them (a buffer, or a mapped file written once), so a block read again —
    /// every query over it — is not checksummed again.
    verified: Vec<Box<[AtomicBool]>>,
    /// Unique among the readers this process opened (see [`SegmentReader::instance_id`]).
    instance: u64,
    /// The footer's star-trees, decoded at first use.
    star_trees: Vec<OnceLock<Arc<crate::star_tree::StarTree>>>,
}

/// The next [`SegmentReader::instance_id`].
static NEXT_INSTANCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl std::fmt::Debug for SegmentReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentReader")
            .field("rows", &self.footer.row_count)
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

/// Fills a `OnceLock` with a fallible initialiser.
fn cached<T>(cell: &OnceLock<Arc<T>>, init: impl FnOnce() -> Result<T>) -> Result<Arc<T>> {
    if let Some(v) = cell.get() {
        return Ok(v.clone());
    }
    let v = Arc::new(init()?);
    Ok(cell.get_or_init(|| v).clone())
}

impl SegmentReader {
    /// Opens a segment, validating its header, trailer and footer.
    pub fn open(bytes: Bytes) -> Result<Self> {
        let footer = read_footer(&bytes)?;
        let footer_trees = footer.star_trees.clone();
        let caches = footer
            .columns
            .iter()
            .map(|_| ColumnCache::default())
            .collect();
        let arrow_schema = footer.schema.arrow_schema();
        let verified = footer
            .columns
            .iter()
            .map(|c| c.blocks.iter().map(|_| AtomicBool::new(false)).collect())
            .collect();
        Ok(SegmentReader {
            bytes,
            footer,
            caches,
            arrow_schema,
            verified,
            instance: NEXT_INSTANCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            star_trees: footer_trees.iter().map(|_| OnceLock::new()).collect(),
        })
    }

    /// A number no other reader opened by this process has, never reused: what caches of
    /// results computed over this reader's (immutable) rows are keyed by.
    pub fn instance_id(&self) -> u64 {
        self.instance
    }

    pub fn footer(&self) -> &Footer {
        &self.footer
    }

    /// Star-tree `i` of the footer's `star_trees`, decoded (and checksummed) at first use.
    pub fn star_tree(&self, i: usize) -> Result<Arc<crate::star_tree::StarTree>> {
        let meta = self
            .footer
            .star_trees
            .get(i)
            .ok_or_else(|| corrupt(format!("no star-tree {i}")))?;
        cached(&self.star_trees[i], || {
            let def = &self.footer.schema.star_trees[meta.tree as usize];
            let raw = self.section(&meta.section, &format!("star-tree {}", meta.tree))?;
            let floats = crate::star_tree::float_metrics(&self.footer.schema, def);
            crate::star_tree::StarTree::decode(def, &floats, &raw)
        })
    }

    /// Column `col`'s text index, opened at first use; `None` when the segment has none
    /// (a real-time chunk, a segment written before the column asked for one).
    pub fn text_index(&self, col: usize) -> Result<Option<Arc<crate::text::TextIndex>>> {
        let meta = &self.footer.columns[col];
        let Some(s) = &meta.text else {
            return Ok(None);
        };
        cached(&self.caches[col].text, || {
            let raw = self.section(s, &format!("{} text index", meta.name))?;
            crate::text::TextIndex::open(&raw, self.row_count())
        })
        .map(Some)
    }

    /// Column `col`'s JSON index, opened at first use; `None` when the segment has none.
    pub fn json_index(&self, col: usize) -> Result<Option<Arc<crate::json::JsonIndex>>> {
        let meta = &self.footer.columns[col];
        let Some(s) = &meta.json else {
            return Ok(None);
        };
        cached(&self.caches[col].json, || {
            let raw = self.section(s, &format!("{} JSON index", meta.name))?;
            crate::json::JsonIndex::open(&raw, self.row_count())
        })
        .map(Some)
    }

    /// Checks every section's checksum now rather than at its first read (a copy fetched
    /// from elsewhere, or a local cache file after a crash).
    pub fn verify(&self) -> Result<()> {
        crate::layout::verify_sections(&self.bytes, &self.footer)
    }

    pub fn row_count(&self) -> u32 {
        self.footer.row_count as u32
    }

    pub fn size_bytes(&self) -> usize {
        self.bytes.len()
    }

    pub fn arrow_schema(&self) -> &SchemaRef {
        &self.arrow_schema
    }

    pub fn column_index(&self, name: &str) -> Result<usize> {
        self.footer
            .schema
            .column_index(name)
            .ok_or_else(|| SegmentError::UnknownColumn(name.to_string()))
    }

    pub fn column_def(&self, col: usize) -> &ColumnDef {
        &self.footer.schema.columns[col]
    }

    pub fn column_meta(&self, col: usize) -> &ColumnMeta {
        &self.footer.columns[col]
    }

    fn section(&self, s: &SectionRef, what: &str) -> Result<std::borrow::Cow<'_, [u8]>> {
        read_section(&self.bytes, s, what)
    }

    /// All doc ids of the segment.
    pub fn all_docs(&self) -> RoaringBitmap {
        let mut b = RoaringBitmap::new();
        if self.footer.row_count > 0 {
            b.insert_range(0..self.footer.row_count as u32);
        }
        b
    }

    /// Doc ids whose value in `col` is null.
    pub fn nulls(&self, col: usize) -> Result<Arc<RoaringBitmap>> {
        let meta = &self.footer.columns[col];
        cached(&self.caches[col].nulls, || match &meta.nulls {
            None => Ok(RoaringBitmap::new()),
            Some(s) => {
                let raw = self.section(s, &format!("{} nulls", meta.name))?;
                let bm = RoaringBitmap::deserialize_from(&raw[..])
                    .map_err(|e| corrupt(format!("{} null bitmap: {e}", meta.name)))?;
                if bm.max().is_some_and(|m| m as u64 >= self.footer.row_count) {
                    return Err(corrupt(format!(
                        "{} null bitmap names a doc past the end",
                        meta.name
                    )));
                }
                Ok(bm)
            }
        })
    }

    /// The decoded dictionary of a (single-value) dictionary-encoded column.
    pub fn dictionary(&self, col: usize) -> Result<Option<Arc<Dictionary>>> {
        match &self.footer.columns[col].encoding {
            Encoding::Dictionary { .. } => self.any_dictionary(col),
            _ => Ok(None),
        }
    }

    /// The dictionary of the values of a multi-value column.
    pub fn value_dictionary(&self, col: usize) -> Result<Option<Arc<Dictionary>>> {
        match &self.footer.columns[col].encoding {
            Encoding::MultiValue { .. } => self.any_dictionary(col),
            _ => Ok(None),
        }
    }

    fn any_dictionary(&self, col: usize) -> Result<Option<Arc<Dictionary>>> {
        let meta = &self.footer.columns[col];
        let (Encoding::Dictionary {
            cardinality,
            dictionary,
            ..
        }
        | Encoding::MultiValue {
            cardinality,
            dictionary,
            ..
        }) = &meta.encoding
        else {
            return Ok(None);
        };
        let ty = self.footer.schema.columns[col].ty;
        cached(&self.caches[col].dictionary, || {
            let what = format!("{} dictionary", meta.name);
            let raw = self.section(dictionary, &what)?;
            decode_dictionary(
                &raw,
                *cardinality as usize,
                ty.physical(),
                self.footer.format_version,
                &what,
            )
        })
        .map(Some)
    }

    /// Per dictionary id of the single-value column `col`, how many of `docs` (every doc
    /// when `None`) hold that value, from the index alone: each id's sorted run, or its
    /// inverted index entry. No row is read. `None` when the column has no dictionary, or
    /// neither sorted runs nor an inverted index over every id. Costs one entry decoded per
    /// id: for columns of few values.
    pub fn value_counts(
        &self,
        col: usize,
        docs: Option<&RoaringBitmap>,
    ) -> Result<Option<Vec<u64>>> {
        let Encoding::Dictionary { cardinality, .. } = &self.footer.columns[col].encoding else {
            return Ok(None);
        };
        let ids = *cardinality as usize;
        if let Some(starts) = self.sorted_runs(col)? {
            let counts = starts.windows(2).map(|w| match docs {
                None => (w[1] - w[0]) as u64,
                Some(d) => d.range_cardinality(w[0]..w[1]),
            });
            return Ok(Some(counts.collect()));
        }
        let Some(table) = self.inverted(col)? else {
            return Ok(None);
        };
        if Self::table_len(&table) != ids {
            return Ok(None);
        }
        let mut counts = Vec::with_capacity(ids);
        for id in 0..ids {
            let posting = self.table_bitmap(&table, id)?;
            counts.push(match docs {
                None => posting.len(),
                Some(d) => posting.intersection_len(d),
            });
        }
        Ok(Some(counts))
    }

    pub(crate) fn inverted(&self, col: usize) -> Result<Option<Arc<BitmapTable>>> {
        let meta = &self.footer.columns[col];
        let Some(s) = &meta.inverted else {
            return Ok(None);
        };
        cached(&self.caches[col].inverted, || {
            self.bitmap_table(s, &format!("{} inverted index", meta.name))
        })
        .map(Some)
    }

    pub(crate) fn range_table(&self, col: usize) -> Result<Option<Arc<BitmapTable>>> {
        let meta = &self.footer.columns[col];
        let Some(r) = &meta.range else {
            return Ok(None);
        };
        let t = cached(&self.caches[col].range, || {
            self.bitmap_table(&r.section, &format!("{} range index", meta.name))
        })?;
        if t.offsets.len() != r.buckets.len() + 1 {
            return Err(corrupt(format!(
                "{} range index bucket count differs",
                meta.name
            )));
        }
        Ok(Some(t))
    }

    pub(crate) fn sorted_runs(&self, col: usize) -> Result<Option<Arc<Vec<u32>>>> {
        let meta = &self.footer.columns[col];
        let (Some(s), Encoding::Dictionary { cardinality, .. }) =
            (&meta.sorted_runs, &meta.encoding)
        else {
            return Ok(None);
        };
        cached(&self.caches[col].sorted_runs, || {
            let what = format!("{} sorted runs", meta.name);
            let raw = self.section(s, &what)?;
            if raw.len() != (*cardinality as usize + 1) * 4 {
                return Err(corrupt(format!("{what} has the wrong length")));
            }
            let starts: Vec<u32> = raw
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect();
            if starts.windows(2).any(|w| w[0] > w[1])
                || starts
                    .last()
                    .is_some_and(|&l| l as u64 > self.footer.row_count)
            {
                return Err(corrupt(format!(
                    "{what} are not ascending within the segment"
                )));
            }
            Ok(starts)
        })
        .map(Some)
    }

    pub fn bloom(&self, col: usize) -> Result<Option<Arc<Bloom>>> {
        let meta = &self.footer.columns[col];
        let Some(s) = &meta.bloom else {
            return Ok(None);
        };
        cached(&self.caches[col].bloom, || {
            let raw = self.section(s, &format!("{} bloom filter", meta.name))?;
            Bloom::from_bytes(&raw)
        })
        .map(Some)
    }

    fn bitmap_table(&self, s: &SectionRef, what: &str) -> Result<BitmapTable> {
        // Checksum once, then keep only the offsets; entries are decoded on use.
        let raw = self.section(s, what)?;
        let (table_end, offsets) = postings::parse_table(&raw, self.footer.format_version, what)?;
        Ok(BitmapTable {
            base: s.offset as usize + table_end,
            offsets,
        })
    }

    /// Decodes entry `i` of a posting table (inverted index entry or range bucket).
    pub(crate) fn table_bitmap(&self, t: &BitmapTable, i: usize) -> Result<RoaringBitmap> {
        let (Some(&a), Some(&b)) = (t.offsets.get(i), t.offsets.get(i + 1)) else {
            return Err(corrupt(format!("bitmap {i} is outside its index")));
        };
        let bytes = &self.bytes[t.base + a as usize..t.base + b as usize];
        postings::decode_entry(bytes, self.footer.format_version, self.footer.row_count)
            .map_err(|e| corrupt(format!("index entry {i}: {e}")))
    }

    pub(crate) fn table_len(t: &BitmapTable) -> usize {
        t.offsets.len().saturating_sub(1)
    }

    /// The (decompressed) bytes of block `b` of column `col`, its row count, and its name for
    /// errors.
    pub(crate) fn block_bytes(
        &self,
        col: usize,
        b: usize,
    ) -> Result<(std::borrow::Cow<'_, [u8]>, usize, String)> {
        let meta = &self.footer.columns[col];
        let block = meta.blocks.get(b).ok_or_else(|| {
            corrupt(format!(
                "{} has no block {b} (it has {} blocks; the segment has {} rows in blocks of \
                 {}; reader {})",
                meta.name,
                meta.blocks.len(),
                self.footer.row_count,
                self.footer.block_rows,
                self.instance
            ))
        })?;
        let what = format!("{} block {b}", meta.name);
        let checked = &self.verified[col][b];
        let verify = !checked.load(Ordering::Relaxed);
        let raw = crate::layout::read_section_checked(&self.bytes, &block.data, &what, verify)?;
        if verify {
            checked.store(true, Ordering::Relaxed);
        }
        Ok((raw, self.block_len(b), what))
    }

    /// Decodes block `b` of column `col`.
    pub fn block(&self, col: usize, b: usize) -> Result<BlockValues> {
        self.block_values(col, b, None)
    }

    /// Decodes rows `picked` (ascending offsets within the block) of block `b` of column
    /// `col`, or every row when `picked` is `None`. Picked rows of bit-packed blocks are read
    /// without unpacking the others.
    pub(crate) fn block_values(
        &self,
        col: usize,
        b: usize,
        picked: Option<&[usize]>,
    ) -> Result<BlockValues> {
        let meta = &self.footer.columns[col];
        let (raw, rows, what) = self.block_bytes(col, b)?;
        if picked.and_then(|p| p.last()).is_some_and(|&k| k >= rows) {
            return Err(corrupt(format!("{what}: a picked row is past the block")));
        }
        match &meta.encoding {
            Encoding::Dictionary {
                cardinality,
                bit_width,
                ..
            } => {
                let ids = match picked {
                    Some(p) => {
                        bitpack::check(&raw, rows, *bit_width)?;
                        p.iter()
                            .map(|&k| bitpack::get(&raw, *bit_width, k) as u32)
                            .collect()
                    }
                    None => {
                        let mut ids = Vec::with_capacity(rows);
                        bitpack::unpack_into(&raw, rows, *bit_width, &mut ids)?;
                        ids
                    }
                };
                if *cardinality == 0 {
                    // Only nulls: ids are placeholders.
                    return Ok(BlockValues::Ids(ids));
                }
                // Ids of `bit_width` bits cannot pass a dictionary of 2^bit_width entries;
                // otherwise the largest is checked (a reduction that vectorizes).
                let fits = 1u64
                    .checked_shl(u32::from(*bit_width))
                    .is_some_and(|ids| u64::from(*cardinality) >= ids);
                if !fits && ids.iter().copied().fold(0, u32::max) >= *cardinality {
                    return Err(corrupt(format!("{what} holds an id past the dictionary")));
                }
                Ok(BlockValues::Ids(ids))
            }
            Encoding::MultiValue {
                cardinality,
                bit_width,
                count_width,
                ..
            } => {
                if picked.is_some() {
                    return Err(corrupt(format!("{what}: multi-value rows read one by one")));
                }
                let (counts, ids) = crate::multi_value::decode_block(
                    &raw,
                    rows,
                    *cardinality,
                    *bit_width,
                    *count_width,
                    &what,
                )?;
                Ok(BlockValues::Multi { counts, ids })
            }
            Encoding::RawStrings => {
                if self.footer.schema.columns[col].ty.physical() != Physical::Str {
                    return Err(corrupt(format!(
                        "{what}: raw strings are only valid for string columns"
                    )));
                }
                Ok(BlockValues::Strs(match picked {
                    Some(p) => crate::string_block::pick(&raw, rows, p, &what)?,
                    None => crate::string_block::decode(&raw, rows, &what)?,
                }))
            }
            Encoding::Packed => {
                if self.footer.schema.columns[col].ty.physical() != Physical::I64 {
                    return Err(corrupt(format!(
                        "{what}: packed encoding is only valid for integer columns"
                    )));
                }
                Ok(BlockValues::I64(match picked {
                    Some(p) => {
                        let mut out = Vec::with_capacity(p.len());
                        crate::int_block::decode_picked(&raw, rows, p, &mut out, &what)?;
                        out
                    }
                    None => crate::int_block::decode(&raw, rows, &what)?,
                }))
            }
            Encoding::Raw { delta } => {
                if raw.len() != rows * 8 {
                    return Err(corrupt(format!(
                        "{what} holds {} bytes for {rows} values",
                        raw.len()
                    )));
                }
                let word = |k: usize| {
                    i64::from_le_bytes(raw[k * 8..k * 8 + 8].try_into().expect("8 bytes"))
                };
                let values: Vec<i64> = match (picked, *delta) {
                    (Some(p), false) => p.iter().map(|&k| word(k)).collect(),
                    // Deltas (formats 1-5): every value up to the last picked row is summed.
                    (picked, true) => {
                        let upto = picked.and_then(|p| p.last()).map_or(rows, |&k| k + 1);
                        let mut prev = 0i64;
                        let all: Vec<i64> = (0..upto)
                            .map(|k| {
                                prev = prev.wrapping_add(word(k));
                                prev
                            })
                            .collect();
                        match picked {
                            Some(p) => p.iter().map(|&k| all[k]).collect(),
                            None => all,
                        }
                    }
                    (None, false) => (0..rows).map(word).collect(),
                };
                match self.footer.schema.columns[col].ty.physical() {
                    Physical::F64 if !*delta => Ok(BlockValues::F64(
                        values
                            .into_iter()
                            .map(|w| f64::from_bits(w as u64))
                            .collect(),
                    )),
                    Physical::I64 => Ok(BlockValues::I64(values)),
                    other => Err(corrupt(format!(
                        "{what}: raw encoding is not valid for {other:?} columns"
                    ))),
                }
            }
        }
    }

    pub fn block_rows(&self) -> usize {
        self.footer.block_rows as usize
    }

    /// Rows in block `b` (the last block may be short).
    pub fn block_len(&self, b: usize) -> usize {
        let start = b as u64 * self.footer.block_rows as u64;
        (self.footer.row_count.saturating_sub(start)).min(self.footer.block_rows as u64) as usize
    }

    /// Materializes `projection` for `docs` (ascending doc ids) as a record batch. An empty
    /// projection yields a batch with no columns and `docs.len()` rows.
    pub fn read_batch(&self, projection: &[usize], docs: &[u32]) -> Result<RecordBatch> {
        let mut arrays = Vec::with_capacity(projection.len());
        let mut fields = Vec::with_capacity(projection.len());
        for &c in projection {
            if c >= self.footer.columns.len() {
                return Err(corrupt(format!(
                    "projection names column {c}, segment has fewer"
                )));
            }
            arrays.push(self.read_column(c, docs)?);
            fields.push(self.arrow_schema.field(c).clone());
        }
        let schema = Arc::new(arrow::datatypes::Schema::new(fields));
        Ok(RecordBatch::try_new_with_options(
            schema,
            arrays,
            &RecordBatchOptions::new().with_row_count(Some(docs.len())),
        )?)
    }

    /// The dictionary ids of `col` for `docs` (ascending, within the segment), or `None` when
    /// the column is not dictionary-encoded in this segment. Null docs carry a placeholder id;
    /// [`SegmentReader::nulls`] says which they are.
    pub fn read_ids(&self, col: usize, docs: &[u32]) -> Result<Option<Vec<u32>>> {
        if col >= self.footer.columns.len() {
            return Err(corrupt(format!(
                "column {col} is past the segment's columns"
            )));
        }
        if !matches!(
            self.footer.columns[col].encoding,
            Encoding::Dictionary { .. }
        ) {
            return Ok(None);
        }
        let g = self.gather(col, docs)?;
        if g.ids.len() != docs.len() {
            return Err(corrupt(format!(
                "{}: dictionary column with raw blocks",
                self.footer.columns[col].name
            )));
        }
        Ok(Some(g.ids))
    }

    /// Per doc of `docs`: its dictionary id or raw value, block by block.
    fn gather(&self, col: usize, docs: &[u32]) -> Result<Gathered> {
        if let Some(&last) = docs.last() {
            if last as u64 >= self.footer.row_count {
                return Err(corrupt(format!(
                    "doc {last} is past the end of the segment"
                )));
            }
        }
        let block_rows = self.footer.block_rows;
        let mut g = Gathered::default();
        let mut i = 0;
        while i < docs.len() {
            let b = docs[i] / block_rows;
            let start = b * block_rows;
            let end = start as u64 + block_rows as u64;
            let j = i + docs[i..].partition_point(|&d| (d as u64) < end);
            let len = self.block_len(b as usize);
            // Docs are ascending and distinct: as many as the block has rows is all of them.
            let block = if j - i == len {
                self.block(col, b as usize)?
            } else if (j - i) * 4 < len {
                // A few rows of the block: read them alone.
                let picked: Vec<usize> = docs[i..j].iter().map(|d| (d - start) as usize).collect();
                self.block_values(col, b as usize, Some(&picked))?
            } else {
                // Most of it: decode all and keep the docs' rows in place.
                self.block(col, b as usize)?.keep(&docs[i..j], start)
            };
            // The first block's values are taken as they are (a block at a time is the
            // common read), later ones appended.
            fn append<T: Copy>(to: &mut Vec<T>, v: Vec<T>) {
                if to.is_empty() {
                    *to = v;
                } else {
                    to.extend_from_slice(&v);
                }
            }
            match block {
                BlockValues::Ids(v) => append(&mut g.ids, v),
                BlockValues::I64(v) => append(&mut g.ints, v),
                BlockValues::F64(v) => append(&mut g.floats, v),
                BlockValues::Strs(v) => g.strs.push(v),
                BlockValues::Multi { .. } => {
                    return Err(corrupt(format!(
                        "{}: a multi-value column read as single values",
                        self.footer.columns[col].name
                    )))
                }
            }
            i = j;
        }
        Ok(g)
    }

    /// Materializes one column for `docs` (ascending, within the segment).
    pub fn read_column(&self, col: usize, docs: &[u32]) -> Result<ArrayRef> {
        let def = &self.footer.schema.columns[col];
        let nb = validity(self.nulls(col)?.as_ref(), docs);
        if def.multi_value {
            return self.read_multi_value(col, docs, nb);
        }
        let dict = self.dictionary(col)?;
        let Gathered {
            ids,
            ints,
            floats,
            strs,
        } = self.gather(col, docs)?;
        if matches!(self.footer.columns[col].encoding, Encoding::RawStrings) {
            return raw_strings_array(&strs, docs.len(), nb, &def.name);
        }
        if let Some(dict) = dict {
            if ids.len() != docs.len() {
                return Err(corrupt(format!(
                    "{}: dictionary column with raw blocks",
                    def.name
                )));
            }
            if dict.is_empty() {
                // Every row is null.
                return Ok(arrow::array::new_null_array(
                    &def.ty.arrow_type(),
                    docs.len(),
                ));
            }
            return dictionary_array(def.ty, &dict, ids, nb);
        }
        let arr: ArrayRef = match def.ty {
            ColumnType::Int
            | ColumnType::Long
            | ColumnType::Timestamp
            | ColumnType::Date
            | ColumnType::Decimal { .. } => int_array(def.ty, ints, nb)?,
            ColumnType::Float => Arc::new(Float32Array::new(
                floats.into_iter().map(|v| v as f32).collect(),
                nb,
            )),
            ColumnType::Double => Arc::new(Float64Array::new(floats.into(), nb)),
            other => {
                return Err(corrupt(format!(
                    "{}: {} columns must be dictionary-encoded",
                    def.name,
                    other.name()
                )))
            }
        };
        if arr.len() != docs.len() {
            return Err(corrupt(format!(
                "{}: block kinds do not match the encoding",
                def.name
            )));
        }
        Ok(arr)
    }
}

impl SegmentReader {
    /// A multi-value column for `docs` (ascending) as an Arrow `List` array.
    fn read_multi_value(
        &self,
        col: usize,
        docs: &[u32],
        nulls: Option<arrow::buffer::NullBuffer>,
    ) -> Result<ArrayRef> {
        if docs
            .last()
            .is_some_and(|&d| d as u64 >= self.footer.row_count)
        {
            return Err(corrupt("a doc past the end of the segment"));
        }
        let dict = self.value_dictionary(col)?.ok_or_else(|| {
            corrupt(format!(
                "{}: not multi-value",
                self.footer.columns[col].name
            ))
        })?;
        let block_rows = self.footer.block_rows;
        let (mut counts, mut ids) = (Vec::with_capacity(docs.len()), Vec::new());
        let mut i = 0;
        while i < docs.len() {
            let b = docs[i] / block_rows;
            let start = b * block_rows;
            let BlockValues::Multi {
                counts: bc,
                ids: bi,
            } = self.block(col, b as usize)?
            else {
                return Err(corrupt("a multi-value block decoded as single values"));
            };
            // Where each doc's values start within the block.
            let mut at = Vec::with_capacity(bc.len() + 1);
            at.push(0usize);
            for &c in &bc {
                at.push(at[at.len() - 1] + c as usize);
            }
            while i < docs.len() && docs[i] / block_rows == b {
                let k = (docs[i] - start) as usize;
                counts.push(bc[k]);
                ids.extend_from_slice(&bi[at[k]..at[k + 1]]);
                i += 1;
            }
        }
        crate::multi_value::list_array(&dict, &counts, &ids, nulls)
    }
}

/// Stored 64-bit integers as the Arrow type of an integer-backed column: INT narrows, a
/// DATE's days become `Date32`, a DECIMAL's unscaled values become `Decimal128(p, s)`.
fn int_array(
    ty: ColumnType,
    v: Vec<i64>,
    nulls: Option<arrow::buffer::NullBuffer>,
) -> Result<ArrayRef> {
    Ok(match ty {
        ColumnType::Int => Arc::new(Int32Array::new(
            v.into_iter().map(|x| x as i32).collect(),
            nulls,
        )),
        ColumnType::Timestamp => Arc::new(TimestampMillisecondArray::new(v.into(), nulls)),
        ColumnType::Date => Arc::new(Date32Array::new(
            v.into_iter().map(|x| x as i32).collect(),
            nulls,
        )),
        ColumnType::Decimal { precision, scale } => Arc::new(
            Decimal128Array::new(v.into_iter().map(i128::from).collect(), nulls)
                .with_precision_and_scale(precision, scale as i8)
                .map_err(|e| corrupt(format!("decimal column: {e}")))?,
        ),
        _ => Arc::new(Int64Array::new(v.into(), nulls)),
    })
}

/// The picked rows of raw string blocks as the column's Arrow type, `Dictionary(Int32, Utf8)`,
/// one dictionary entry per row.
fn raw_strings_array(
    parts: &[StringArray],
    rows: usize,
    nulls: Option<arrow::buffer::NullBuffer>,
    name: &str,
) -> Result<ArrayRef> {
    let refs: Vec<&dyn Array> = parts.iter().map(|a| a as &dyn Array).collect();
    let values: ArrayRef = match refs.len() {
        0 => Arc::new(StringArray::from(Vec::<&str>::new())),
        1 => Arc::new(parts[0].clone()),
        _ => arrow::compute::concat(&refs)?,
    };
    if values.len() != rows {
        return Err(corrupt(format!(
            "{name}: raw string blocks do not match the docs"
        )));
    }
    let keys = Int32Array::new((0..rows as i32).collect(), nulls);
    Ok(Arc::new(DictionaryArray::<Int32Type>::try_new(
        keys, values,
    )?))
}

/// Turns dictionary ids into the column's Arrow array. Strings become a dictionary array;
/// a large dictionary is first compacted to the values these rows use, so downstream
/// operators never touch millions of unused values per batch.
fn dictionary_array(
    ty: ColumnType,
    dict: &Dictionary,
    ids: Vec<u32>,
    nulls: Option<arrow::buffer::NullBuffer>,
) -> Result<ArrayRef> {
    Ok(match dict {
        Dictionary::Str(values) => {
            let (keys, values): (Vec<i32>, ArrayRef) =
                if values.len() <= 4096 || values.len() <= ids.len() {
                    (
                        ids.iter().map(|&i| i as i32).collect(),
                        Arc::new(values.clone()),
                    )
                } else {
                    compact(values, &ids)?
                };
            let keys = Int32Array::new(ScalarBuffer::from(keys), nulls);
            Arc::new(DictionaryArray::<Int32Type>::try_new(keys, values)?)
        }
        Dictionary::I64(values) => match ty {
            // DECIMAL straight to 128 bits, in one pass.
            ColumnType::Decimal { precision, scale } => {
                let v: Vec<i128> = ids.iter().map(|&i| values[i as usize] as i128).collect();
                Arc::new(
                    Decimal128Array::new(v.into(), nulls)
                        .with_precision_and_scale(precision, scale as i8)
                        .map_err(|e| corrupt(format!("decimal column: {e}")))?,
                )
            }
            ColumnType::Boolean => Arc::new(BooleanArray::new(
                ids.iter().map(|&i| values[i as usize] != 0).collect(),
                nulls,
            )),
            _ => int_array(ty, ids.iter().map(|&i| values[i as usize]).collect(), nulls)?,
        },
        Dictionary::F64(values) => {
            let v: Vec<f64> = ids.iter().map(|&i| values[i as usize]).collect();
            match ty {
                ColumnType::Float => Arc::new(Float32Array::new(
                    v.into_iter().map(|x| x as f32).collect(),
                    nulls,
                )),
                _ => Arc::new(Float64Array::new(v.into(), nulls)),
            }
        }
    })
}

thread_local! {
    /// Per-thread scratch map from dictionary id to compacted key; every slot is u32::MAX
    /// between calls, so a batch costs O(rows), not O(dictionary).
    static REMAP: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Keys into, and values of, a dictionary holding only the values `ids` use (first-use order).
fn compact(values: &StringArray, ids: &[u32]) -> Result<(Vec<i32>, ArrayRef)> {
    REMAP.with(|r| {
        let mut remap = r.borrow_mut();
        if remap.len() < values.len() {
            remap.resize(values.len(), u32::MAX);
        }
        let mut used: Vec<u32> = Vec::new();
        let keys: Vec<i32> = ids
            .iter()
            .map(|&id| {
                let slot = &mut remap[id as usize];
                if *slot == u32::MAX {
                    *slot = used.len() as u32;
                    used.push(id);
                }
                *slot as i32
            })
            .collect();
        for &u in &used {
            remap[u as usize] = u32::MAX;
        }
        let taken = arrow::compute::take(values, &UInt32Array::from(used), None)?;
        Ok((keys, taken))
    })
}

/// Format 1–4 string dictionary body: `length:u32{n} utf8_bytes`. Out: Arrow offsets and
/// the value bytes.
fn plain_strings(raw: &[u8], n: usize, what: &str) -> Result<(Vec<i32>, Vec<u8>)> {
    let len_end = n
        .checked_mul(4)
        .filter(|&e| e <= raw.len())
        .ok_or_else(|| corrupt(format!("{what} lengths are truncated")))?;
    let data = &raw[len_end..];
    let mut offsets: Vec<i32> = Vec::with_capacity(n + 1);
    offsets.push(0);
    let mut end: u64 = 0;
    for c in raw[..len_end].chunks_exact(4) {
        end += u32::from_le_bytes(c.try_into().expect("4 bytes")) as u64;
        if end > data.len() as u64 {
            return Err(corrupt(format!("{what} lengths exceed its bytes")));
        }
        offsets.push(end as i32);
    }
    if end != data.len() as u64 {
        return Err(corrupt(format!(
            "{what} lengths do not add up to its bytes"
        )));
    }
    Ok((offsets, data.to_vec()))
}

/// Format 5 front-coded string dictionary body (after the count; see
/// `builder::front_code`): `width:u8 prefix:u8{n} suffix_len:u{width*8}{n} suffixes`.
fn front_decode(raw: &[u8], n: usize, what: &str) -> Result<(Vec<i32>, Vec<u8>)> {
    let width =
        *raw.first()
            .ok_or_else(|| corrupt(format!("{what} is shorter than its header")))? as usize;
    if !matches!(width, 1 | 2 | 4) {
        return Err(corrupt(format!("{what} suffix length width {width}")));
    }
    let lens_at = n.checked_add(1);
    let suffixes_at = lens_at
        .and_then(|a| n.checked_mul(width).and_then(|l| a.checked_add(l)))
        .filter(|&e| e <= raw.len())
        .ok_or_else(|| corrupt(format!("{what} lengths are truncated")))?;
    let prefixes = &raw[1..1 + n];
    let lens = &raw[1 + n..suffixes_at];
    let suffixes = &raw[suffixes_at..];
    let suffix_len = |i: usize| length_at(lens, width, i);
    // Sizes first: every value's length, checked against its neighbour and the bytes.
    let (mut total, mut suffix_total, mut prev_len) = (0usize, 0usize, 0usize);
    for (i, &p) in prefixes.iter().enumerate() {
        let (p, s) = (p as usize, suffix_len(i));
        if p > prev_len {
            return Err(corrupt(format!(
                "{what} value {i} shares more bytes than its neighbour has"
            )));
        }
        suffix_total += s;
        if suffix_total > suffixes.len() {
            return Err(corrupt(format!("{what} lengths exceed its bytes")));
        }
        prev_len = p + s;
        total += prev_len;
    }
    if suffix_total != suffixes.len() {
        return Err(corrupt(format!(
            "{what} lengths do not add up to its bytes"
        )));
    }
    let total = i32::try_from(total)
        .map_err(|_| corrupt(format!("{what} is over 2 GiB of strings")))? as usize;
    let mut data: Vec<u8> = Vec::with_capacity(total);
    let mut offsets: Vec<i32> = Vec::with_capacity(n + 1);
    offsets.push(0);
    let (mut prev_start, mut at) = (0usize, 0usize);
    for (i, &p) in prefixes.iter().enumerate() {
        let start = data.len();
        data.extend_from_within(prev_start..prev_start + p as usize);
        let s = suffix_len(i);
        data.extend_from_slice(&suffixes[at..at + s]);
        at += s;
        prev_start = start;
        offsets.push(data.len() as i32);
    }
    Ok((offsets, data))
}

fn decode_dictionary(
    raw: &[u8],
    cardinality: usize,
    p: Physical,
    version: u32,
    what: &str,
) -> Result<Dictionary> {
    match p {
        Physical::Str => {
            if raw.len() < 4 {
                return Err(corrupt(format!("{what} is shorter than its header")));
            }
            let n = u32::from_le_bytes(raw[..4].try_into().expect("4 bytes")) as usize;
            if n != cardinality {
                return Err(corrupt(format!(
                    "{what} holds {n} values, footer says {cardinality}"
                )));
            }
            let (offsets, data) = if version >= 5 {
                front_decode(&raw[4..], n, what)?
            } else {
                plain_strings(&raw[4..], n, what)?
            };
            let arr = StringArray::try_new(
                OffsetBuffer::new(ScalarBuffer::from(offsets)),
                Buffer::from(data),
                None,
            )
            .map_err(|e| corrupt(format!("{what}: {e}")))?;
            Ok(Dictionary::Str(arr))
        }
        Physical::I64 | Physical::F64 | Physical::Bool => {
            if raw.len() != cardinality * 8 {
                return Err(corrupt(format!(
                    "{what} holds {} bytes for {cardinality} values",
                    raw.len()
                )));
            }
            let words = raw
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")));
            Ok(match p {
                Physical::F64 => Dictionary::F64(words.map(|w| f64::from_bits(w as u64)).collect()),
                _ => Dictionary::I64(words.collect()),
            })
        }
    }
}

#[cfg(test)]
mod dictionary_tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn front_coded_dictionaries_round_trip(
            set in prop::collection::btree_set("[a-c]{0,4}[\\x{e9}x]{0,300}", 0..60)
        ) {
            let values: Vec<&str> = set.iter().map(String::as_str).collect();
            let raw = crate::builder::front_code(values.iter().map(|s| s.as_bytes()), values.len());
            let Dictionary::Str(arr) = decode_dictionary(&raw, values.len(), Physical::Str, 5, "d")
                .unwrap() else { panic!("a string dictionary") };
            prop_assert_eq!(arr.iter().map(Option::unwrap).collect::<Vec<_>>(), values);
        }

        #[test]
        fn corrupt_dictionaries_are_errors(
            bytes in prop::collection::vec(any::<u8>(), 0..200),
            n in 0usize..20,
            set in prop::collection::btree_set("[a-c]{0,6}", 1..20),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut raw = (n as u32).to_le_bytes().to_vec();
            raw.extend_from_slice(&bytes);
            // Arbitrary bytes: an error, or exactly `n` values.
            for version in [4, 5] {
                if let Ok(Dictionary::Str(a)) = decode_dictionary(&raw, n, Physical::Str, version, "d") {
                    prop_assert_eq!(a.len(), n);
                }
            }
            // A valid front-coded dictionary cut short is an error.
            let values: Vec<&str> = set.iter().map(String::as_str).collect();
            let full = crate::builder::front_code(values.iter().map(|s| s.as_bytes()), values.len());
            let short = &full[..cut.index(full.len())];
            prop_assert!(decode_dictionary(short, values.len(), Physical::Str, 5, "d").is_err());
        }
    }
}
