//! The byte layout of a segment file: header, sections, footer, trailer (see README.md for the
//! grammar). In: raw segment bytes. Out: a validated [`Footer`] and checked section reads.
//!
//! Invariants: every section read is bounds-checked against the file and checksummed; the
//! footer is checksummed before it is parsed; nothing here trusts a length it has not checked.

use serde::{Deserialize, Serialize};

use crate::error::{corrupt, Result, SegmentError};
use crate::types::SegmentSchema;

/// First 8 bytes of every segment file.
pub const HEADER_MAGIC: &[u8; 8] = b"BASALTSG";
/// Last 8 bytes of every segment file.
pub const TRAILER_MAGIC: &[u8; 8] = b"BSLTEND\0";
/// The format version this build writes.
pub const FORMAT_VERSION: u32 = 10;
/// header magic + version.
pub const HEADER_LEN: usize = 12;
/// footer offset u64 + footer length u64 + footer crc u32 + version u32 + magic.
pub const TRAILER_LEN: usize = 8 + 8 + 4 + 4 + 8;
/// Upper bound on a decompressed section, so a corrupt length cannot ask for all memory.
pub const MAX_SECTION_BYTES: u64 = 1 << 32;

/// How a section's stored bytes are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    None,
    Zstd,
}

/// Where a section lives in the file and how to check and decode it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SectionRef {
    pub offset: u64,
    /// Stored (possibly compressed) length.
    pub len: u64,
    /// Decoded length.
    pub raw_len: u64,
    pub codec: Codec,
    /// CRC-32 (IEEE) of the stored bytes.
    pub crc: u32,
}

/// Minimum and maximum of one block, as order-preserving keys: dictionary ids for dictionary
/// columns, values for integer columns, total-order keys (see [`f64_key`]) for float columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZoneMap {
    pub min: i64,
    pub max: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlockMeta {
    pub data: SectionRef,
    /// None when every row of the block is null.
    pub zone: Option<ZoneMap>,
    pub null_count: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Encoding {
    /// Sorted dictionary, bit-packed ids per block.
    Dictionary {
        cardinality: u32,
        bit_width: u8,
        dictionary: SectionRef,
    },
    /// Plain little-endian values per block; `delta` stores the first value then differences
    /// (integers only).
    Raw { delta: bool },
    /// Near-unique string columns without an inverted, sorted or range index (format 6): each
    /// block holds its rows' lengths and bytes in separately compressed 1,024-row frames (see
    /// [`crate::string_block`]); zone maps hold [`crate::string_block::prefix_key`]s.
    RawStrings,
    /// Integer columns (format 6): per block, frame-of-reference or zigzag-delta bit packing
    /// (see [`crate::int_block`]).
    Packed,
    /// Multi-value columns (format 3): sorted dictionary over the arrays' values; a block
    /// holds its docs' value counts (`count_width` bits) then the values' ids (`bit_width`).
    MultiValue {
        cardinality: u32,
        bit_width: u8,
        count_width: u8,
        dictionary: SectionRef,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RangeBucket {
    pub min: i64,
    pub max: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RangeIndexMeta {
    /// Offsets table + bitmaps, one per bucket, in key order.
    pub section: SectionRef,
    pub buckets: Vec<RangeBucket>,
}

/// Column-level statistics, used for segment pruning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnStats {
    /// Order-preserving keys like [`ZoneMap`]; for string columns the dictionary bounds are
    /// kept in `min_str` / `max_str` because ids are not comparable across segments.
    pub min_key: Option<i64>,
    pub max_key: Option<i64>,
    pub min_str: Option<String>,
    pub max_str: Option<String>,
    pub null_count: u64,
    /// Distinct non-null values: exact for dictionary and raw-string columns, a HyperLogLog
    /// estimate ([`crate::ndv`]) for packed and raw numeric ones, absent in segments written
    /// before estimates were kept.
    pub distinct: Option<u64>,
    /// Non-null values are non-decreasing in doc order and there are no nulls.
    pub sorted: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnMeta {
    pub name: String,
    pub encoding: Encoding,
    pub blocks: Vec<BlockMeta>,
    /// Roaring bitmap of null doc ids; absent when the column has no nulls.
    pub nulls: Option<SectionRef>,
    pub stats: ColumnStats,
    /// Offsets table + one roaring bitmap per dictionary id.
    pub inverted: Option<SectionRef>,
    pub range: Option<RangeIndexMeta>,
    /// `cardinality + 1` u32 doc starts: id `i` occupies docs `[starts[i], starts[i+1])`.
    pub sorted_runs: Option<SectionRef>,
    pub bloom: Option<SectionRef>,
    /// The column's text index (format 9; see [`crate::text::index`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<SectionRef>,
    /// The column's JSON index (format 10; see [`crate::json::index`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json: Option<SectionRef>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Footer {
    pub format_version: u32,
    pub row_count: u64,
    pub block_rows: u32,
    pub schema: SegmentSchema,
    /// Min and max of the time column in epoch milliseconds.
    pub time_range: Option<(i64, i64)>,
    /// The column rows were sorted by at build time, if any.
    pub sorted_by: Option<String>,
    pub columns: Vec<ColumnMeta>,
    pub created_by: String,
    /// Star-trees built (format 8): each names its definition in `schema.star_trees`. A
    /// definition has none when its tree would have been too large.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub star_trees: Vec<crate::star_tree::StarTreeMeta>,
}

/// Maps an f64 to an i64 whose integer order is `f64::total_cmp` order.
pub fn f64_key(v: f64) -> i64 {
    let b = v.to_bits() as i64;
    b ^ ((((b >> 63) as u64) >> 1) as i64)
}

/// Inverse of [`f64_key`].
pub fn key_f64(k: i64) -> f64 {
    let b = k ^ ((((k >> 63) as u64) >> 1) as i64);
    f64::from_bits(b as u64)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

/// Checks header and trailer, then checksums and parses the footer.
pub fn read_footer(bytes: &[u8]) -> Result<Footer> {
    if bytes.len() < HEADER_LEN + TRAILER_LEN {
        return Err(SegmentError::Truncated(format!(
            "{} bytes is shorter than header and trailer",
            bytes.len()
        )));
    }
    if &bytes[..8] != HEADER_MAGIC {
        return Err(SegmentError::NotASegment(
            "header magic does not match".into(),
        ));
    }
    let t = bytes.len() - TRAILER_LEN;
    if &bytes[bytes.len() - 8..] != TRAILER_MAGIC {
        return Err(SegmentError::Truncated(
            "trailer magic not found at end of file".into(),
        ));
    }
    let version = u32_at(bytes, t + 20);
    let header_version = u32_at(bytes, 8);
    if version != header_version {
        return Err(corrupt(format!(
            "header says version {header_version}, trailer says {version}"
        )));
    }
    if version == 0 || version > FORMAT_VERSION {
        return Err(SegmentError::UnsupportedVersion {
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let footer_offset = u64_at(bytes, t);
    let footer_len = u64_at(bytes, t + 8);
    let footer_crc = u32_at(bytes, t + 16);
    let end = footer_offset
        .checked_add(footer_len)
        .ok_or_else(|| corrupt("footer range overflows"))?;
    if footer_offset < HEADER_LEN as u64 || end > t as u64 {
        return Err(SegmentError::Truncated(format!(
            "footer at {footer_offset}+{footer_len} lies outside the {} bytes before the trailer",
            t
        )));
    }
    let raw = &bytes[footer_offset as usize..end as usize];
    let computed = crc32fast::hash(raw);
    if computed != footer_crc {
        return Err(SegmentError::Checksum {
            section: "footer".into(),
            stored: footer_crc,
            computed,
        });
    }
    let json = zstd_decode(raw, MAX_SECTION_BYTES, "footer")?;
    let footer: Footer = serde_json::from_slice(&json)?;
    if footer.format_version != version {
        return Err(corrupt("footer version differs from trailer version"));
    }
    validate_footer(&footer, footer_offset)?;
    Ok(footer)
}

/// Structural checks so later code can index without re-checking.
fn validate_footer(f: &Footer, data_end: u64) -> Result<()> {
    if f.block_rows == 0 {
        return Err(corrupt("block_rows is 0"));
    }
    if f.schema.columns.len() != f.columns.len() {
        return Err(corrupt("schema and column metadata differ in length"));
    }
    let blocks = f.row_count.div_ceil(f.block_rows as u64);
    let check = |s: &SectionRef, what: &str| -> Result<()> {
        let end = s
            .offset
            .checked_add(s.len)
            .ok_or_else(|| corrupt("section overflows"))?;
        if s.offset < HEADER_LEN as u64 || end > data_end {
            return Err(SegmentError::Truncated(format!(
                "{what} at {}+{} lies outside the data area (ends at {data_end})",
                s.offset, s.len
            )));
        }
        if s.raw_len > MAX_SECTION_BYTES || (s.codec == Codec::None && s.raw_len != s.len) {
            return Err(corrupt(format!("{what} has an impossible length")));
        }
        Ok(())
    };
    for (def, c) in f.schema.columns.iter().zip(&f.columns) {
        if def.name != c.name {
            return Err(corrupt(format!(
                "column {:?} metadata is named {:?}",
                def.name, c.name
            )));
        }
        if c.blocks.len() as u64 != blocks {
            return Err(corrupt(format!(
                "column {:?} has {} blocks, {} rows need {}",
                c.name,
                c.blocks.len(),
                f.row_count,
                blocks
            )));
        }
        for b in &c.blocks {
            check(&b.data, &format!("column {:?} block", c.name))?;
        }
        if def.multi_value != matches!(c.encoding, Encoding::MultiValue { .. }) {
            return Err(corrupt(format!(
                "column {:?}: multi-value schema and encoding disagree",
                c.name
            )));
        }
        match &c.encoding {
            Encoding::Dictionary {
                dictionary,
                bit_width,
                cardinality,
            }
            | Encoding::MultiValue {
                dictionary,
                bit_width,
                cardinality,
                ..
            } => {
                check(dictionary, &format!("column {:?} dictionary", c.name))?;
                if *bit_width > 32 || *bit_width < crate::bitpack::width_for(*cardinality as usize)
                {
                    return Err(corrupt(format!("column {:?} bit width is wrong", c.name)));
                }
            }
            Encoding::Raw { .. } | Encoding::Packed | Encoding::RawStrings => {}
        }
        if let Encoding::MultiValue { count_width, .. } = &c.encoding {
            if *count_width > 32 {
                return Err(corrupt(format!("column {:?} count width is wrong", c.name)));
            }
        }
        for (s, what) in [
            (&c.nulls, "nulls"),
            (&c.inverted, "inverted index"),
            (&c.sorted_runs, "sorted runs"),
            (&c.bloom, "bloom filter"),
            (&c.text, "text index"),
            (&c.json, "JSON index"),
        ] {
            if let Some(s) = s {
                check(s, &format!("column {:?} {what}", c.name))?;
            }
        }
        if let Some(r) = &c.range {
            check(&r.section, &format!("column {:?} range index", c.name))?;
        }
    }
    for t in &f.star_trees {
        if t.tree as usize >= f.schema.star_trees.len() {
            return Err(corrupt(format!("star-tree {} has no definition", t.tree)));
        }
        check(&t.section, &format!("star-tree {}", t.tree))?;
    }
    Ok(())
}

/// Every section the footer names, with what it is (for error messages).
pub fn sections(footer: &Footer) -> Vec<(String, SectionRef)> {
    let mut out = Vec::new();
    for c in &footer.columns {
        let mut add = |what: &str, s: &SectionRef| out.push((format!("{} {what}", c.name), *s));
        match &c.encoding {
            Encoding::Dictionary { dictionary, .. } | Encoding::MultiValue { dictionary, .. } => {
                add("dictionary", dictionary)
            }
            Encoding::Raw { .. } | Encoding::RawStrings | Encoding::Packed => {}
        }
        for (i, b) in c.blocks.iter().enumerate() {
            add(&format!("block {i}"), &b.data);
        }
        for (what, s) in [
            ("nulls", &c.nulls),
            ("inverted index", &c.inverted),
            ("sorted runs", &c.sorted_runs),
            ("bloom filter", &c.bloom),
            ("text index", &c.text),
            ("JSON index", &c.json),
        ] {
            if let Some(s) = s {
                add(what, s);
            }
        }
        if let Some(r) = &c.range {
            add("range index", &r.section);
        }
    }
    for t in &footer.star_trees {
        out.push((format!("star-tree {}", t.tree), t.section));
    }
    out
}

/// Checks the bounds and checksum of every section, without decoding any: a segment that
/// passes is the file that was written (a truncated or damaged copy fails here).
pub fn verify_sections(bytes: &[u8], footer: &Footer) -> Result<()> {
    for (what, s) in sections(footer) {
        let end = s
            .offset
            .checked_add(s.len)
            .ok_or_else(|| corrupt(format!("{what} overflows")))?;
        if end > bytes.len() as u64 {
            return Err(SegmentError::Truncated(format!(
                "{what} ends past end of file"
            )));
        }
        let computed = crc32fast::hash(&bytes[s.offset as usize..end as usize]);
        if computed != s.crc {
            return Err(SegmentError::Checksum {
                section: what,
                stored: s.crc,
                computed,
            });
        }
    }
    Ok(())
}

/// Returns a section's decoded bytes after checking bounds and checksum.
pub fn read_section<'a>(
    bytes: &'a [u8],
    s: &SectionRef,
    what: &str,
) -> Result<std::borrow::Cow<'a, [u8]>> {
    read_section_checked(bytes, s, what, true)
}

/// [`read_section`], without the checksum when `verify` is false: for a section of the same
/// immutable bytes whose checksum was already found right (bounds and decoding are still
/// checked).
pub fn read_section_checked<'a>(
    bytes: &'a [u8],
    s: &SectionRef,
    what: &str,
    verify: bool,
) -> Result<std::borrow::Cow<'a, [u8]>> {
    let end = s
        .offset
        .checked_add(s.len)
        .ok_or_else(|| corrupt("section overflows"))?;
    if end > bytes.len() as u64 {
        return Err(SegmentError::Truncated(format!(
            "{what} ends past end of file"
        )));
    }
    let stored = &bytes[s.offset as usize..end as usize];
    let computed = if verify {
        crc32fast::hash(stored)
    } else {
        s.crc
    };
    if computed != s.crc {
        return Err(SegmentError::Checksum {
            section: what.to_string(),
            stored: s.crc,
            computed,
        });
    }
    match s.codec {
        Codec::None => Ok(std::borrow::Cow::Borrowed(stored)),
        Codec::Zstd => {
            let out = zstd_decode(stored, s.raw_len, what)?;
            if out.len() as u64 != s.raw_len {
                return Err(corrupt(format!(
                    "{what} decoded to {} bytes, footer says {}",
                    out.len(),
                    s.raw_len
                )));
            }
            Ok(std::borrow::Cow::Owned(out))
        }
    }
}

thread_local! {
    /// One decompression context per thread, reused for every block (creating one costs as
    /// much as decompressing a small block).
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// `raw` zstd-compressed at `level` with this thread's compression context (the same bytes
/// as `zstd::bulk::compress`, without creating and zeroing a context per call).
pub(crate) fn zstd_encode(raw: &[u8], level: i32) -> Result<Vec<u8>> {
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|(l, _)| *l != level) {
            let c = zstd::bulk::Compressor::new(level).map_err(SegmentError::Compress)?;
            *slot = Some((level, c));
        }
        let (_, c) = slot.as_mut().expect("set above");
        c.compress(raw).map_err(SegmentError::Compress)
    })
}

pub(crate) fn zstd_decode(stored: &[u8], limit: u64, what: &str) -> Result<Vec<u8>> {
    // The frame header states the content size; refuse frames larger than the limit before
    // allocating anything.
    let size = zstd::zstd_safe::get_frame_content_size(stored)
        .ok()
        .flatten()
        .ok_or_else(|| corrupt(format!("{what}: zstd frame has no readable content size")))?;
    if size > limit {
        return Err(corrupt(format!(
            "{what}: zstd frame claims {size} bytes, more than the {limit} allowed"
        )));
    }
    let err = |e| SegmentError::Decompress {
        section: what.to_string(),
        source: e,
    };
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        let dec = match slot.as_mut() {
            Some(d) => d,
            None => slot.insert(zstd::bulk::Decompressor::new().map_err(err)?),
        };
        dec.decompress(stored, size as usize).map_err(err)
    })
}

thread_local! {
    /// One compression context per thread (level, context), reused for every section.
    static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(None) };
    /// The size of the last file this thread's writer finished: the next file starts with
    /// room for about as much (a thread builds a run of like segments), instead of growing by
    /// doubling, which copies the image and faults in fresh pages at every step.
    static LAST_FILE_SIZE: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Appends sections to a growing file image; used by the builder.
pub(crate) struct FileWriter {
    pub buf: Vec<u8>,
    /// zstd level; `None` stores every section uncompressed.
    level: Option<i32>,
}

impl FileWriter {
    pub fn new(level: Option<i32>) -> Self {
        let last = LAST_FILE_SIZE.with(|c| c.get());
        let mut buf = Vec::with_capacity((1 << 20).max(last + last / 16));
        buf.extend_from_slice(HEADER_MAGIC);
        buf.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        FileWriter { buf, level }
    }

    /// The zstd level sections are compressed at, if any.
    pub fn level(&self) -> Option<i32> {
        self.level
    }

    /// Appends a section. A zstd section whose compressed form is not smaller than `raw` is
    /// stored uncompressed (readers then use it in place).
    pub fn write(&mut self, raw: &[u8], codec: Codec) -> Result<SectionRef> {
        match codec {
            Codec::Zstd => self.write_smallest(&[raw]),
            Codec::None => Ok(self.append(raw, None)),
        }
    }

    /// Appends whichever of `candidates` (encodings of the same values) is smallest as stored,
    /// each zstd-compressed when the writer compresses and that makes it smaller. A candidate
    /// over twice as long as the shortest is not compressed to find out: the candidates are
    /// bit-packed integers (frame of reference, deltas), whose compression does not close such
    /// a gap, and compressing both forms of a timestamp column was 5% of a batch load's CPU.
    pub fn write_smallest(&mut self, candidates: &[&[u8]]) -> Result<SectionRef> {
        Ok(self.write_smallest_ranked(candidates)?.0)
    }

    /// [`Self::write_smallest`], also saying which candidate was stored and whether it won
    /// clearly: every other candidate was not tried or stored over 1.5 times its size. A
    /// column's later blocks then compress only that form: a timestamp column's deltas
    /// compress to a fraction of its frame-of-reference form, and compressing both for every
    /// block was 5% of a batch load's CPU.
    pub fn write_smallest_ranked(
        &mut self,
        candidates: &[&[u8]],
    ) -> Result<(SectionRef, usize, bool)> {
        /// A candidate tried: its index, bytes, and zstd form when that is smaller.
        struct Tried<'a> {
            index: usize,
            raw: &'a [u8],
            compressed: Option<Vec<u8>>,
        }
        impl Tried<'_> {
            fn stored(&self) -> usize {
                self.compressed.as_ref().map_or(self.raw.len(), Vec::len)
            }
        }
        let mut best: Option<Tried> = None;
        let mut runner_up = usize::MAX;
        let shortest = candidates.iter().map(|c| c.len()).min().unwrap_or(0);
        for (index, &raw) in candidates.iter().enumerate() {
            if raw.len() > shortest.saturating_mul(2) {
                continue;
            }
            let compressed = match self.level {
                Some(level) => Some(self.compress(raw, level)?).filter(|c| c.len() < raw.len()),
                None => None,
            };
            let this = Tried {
                index,
                raw,
                compressed,
            };
            match &best {
                Some(b) if this.stored() >= b.stored() => runner_up = runner_up.min(this.stored()),
                Some(b) => {
                    runner_up = runner_up.min(b.stored());
                    best = Some(this);
                }
                None => best = Some(this),
            }
        }
        let best = best.unwrap_or(Tried {
            index: 0,
            raw: &[],
            compressed: None,
        });
        let clear = runner_up as f64 > 1.5 * best.stored() as f64;
        Ok((self.append(best.raw, best.compressed), best.index, clear))
    }

    fn compress(&self, raw: &[u8], level: i32) -> Result<Vec<u8>> {
        zstd_encode(raw, level)
    }

    /// Appends `compressed` (zstd of `raw`) if given, else `raw`.
    fn append(&mut self, raw: &[u8], compressed: Option<Vec<u8>>) -> SectionRef {
        let offset = self.buf.len() as u64;
        let codec = match &compressed {
            Some(c) => {
                self.buf.extend_from_slice(c);
                Codec::Zstd
            }
            None => {
                self.buf.extend_from_slice(raw);
                Codec::None
            }
        };
        let stored = &self.buf[offset as usize..];
        SectionRef {
            offset,
            len: stored.len() as u64,
            raw_len: raw.len() as u64,
            codec,
            crc: crc32fast::hash(stored),
        }
    }

    pub fn finish(mut self, footer: &Footer) -> Result<Vec<u8>> {
        let json = serde_json::to_vec(footer)?;
        // The trailer does not record the footer's codec: the footer is always zstd.
        let c = self.compress(&json, self.level.unwrap_or(3))?;
        let s = self.append(&json, Some(c));
        self.buf.extend_from_slice(&s.offset.to_le_bytes());
        self.buf.extend_from_slice(&s.len.to_le_bytes());
        self.buf.extend_from_slice(&s.crc.to_le_bytes());
        self.buf.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        self.buf.extend_from_slice(TRAILER_MAGIC);
        LAST_FILE_SIZE.with(|c| c.set(self.buf.len()));
        // A file much smaller than the room made for it (after a larger one) gives the room
        // back: the image may be kept in memory for as long as the segment lives.
        if self.buf.capacity() > (1 << 20) && self.buf.capacity() / 4 > self.buf.len() / 3 {
            self.buf.shrink_to_fit();
        }
        Ok(self.buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn f64_key_preserves_total_order(a in any::<f64>(), b in any::<f64>()) {
            prop_assert_eq!(a.total_cmp(&b), f64_key(a).cmp(&f64_key(b)));
            prop_assert_eq!(key_f64(f64_key(a)).to_bits(), a.to_bits());
        }
    }
}
