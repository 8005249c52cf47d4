//! Reads what a Parquet page says about itself without decoding it. In: the bytes of a
//! column chunk (a page header), a decompressed page's level bytes, a decompressed
//! dictionary page. Out: the header's kind, sizes, value count and encodings; how many rows a
//! page starts; the longest value a dictionary holds.
//!
//! Page headers are Thrift compact-protocol structs. The `parquet` crate's own reader is not
//! public, and it allocates the declared uncompressed size as soon as it has read a header;
//! [`super::parquet_bounds`] must see that size first. A header is read in one walk that holds
//! it to the field types the crate reads ([`super::parquet_thrift`]), so both read the same
//! fields. Every read here is bounded by the bytes given: a malformed header is `None`, never
//! a panic or an allocation.

use super::parquet_thrift::{
    read_page_header, Compact, Event, DATA_PAGE_HEADER, DATA_PAGE_HEADER_V2,
    DICTIONARY_PAGE_HEADER, PAGE_HEADER_STRUCT,
};

/// A page's type ([`PageHeader::kind`]), as the Parquet format numbers them.
pub const DATA_PAGE: i32 = 0;
pub const DATA_PAGE_V2: i32 = 3;

/// Value encodings ([`PageHeader::encoding`]).
pub const PLAIN: i32 = 0;
pub const PLAIN_DICTIONARY: i32 = 2;
pub const RLE: i32 = 3;
pub const DELTA_LENGTH_BYTE_ARRAY: i32 = 6;
pub const DELTA_BYTE_ARRAY: i32 = 7;
pub const RLE_DICTIONARY: i32 = 8;

/// What one page header declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageHeader {
    pub kind: i32,
    pub uncompressed: i32,
    pub compressed: i32,
    /// Values (levels) in a data page, entries in a dictionary page; 0 for other pages.
    pub num_values: i32,
    /// The values' encoding (data and dictionary pages).
    pub encoding: i32,
    /// How a v1 data page stores its repetition levels (RLE or BIT_PACKED).
    pub rep_level_encoding: i32,
    /// A v2 data page's level bytes (repetition, then definition), stored uncompressed
    /// before its values.
    pub levels_len: i32,
    /// Whether a v2 data page's values are compressed (always so for other pages).
    pub is_compressed: bool,
}

/// Reads the page header at the start of `bytes`: the header and its length in bytes. `None`
/// when the bytes are not a complete, well-formed header, or declare a field the crate reads
/// as another type than they say.
pub fn page_header(bytes: &[u8]) -> Option<(PageHeader, usize)> {
    let mut h = PageHeader {
        kind: -1,
        uncompressed: -1,
        compressed: -1,
        num_values: 0,
        encoding: PLAIN,
        rep_level_encoding: RLE,
        levels_len: 0,
        is_compressed: true,
    };
    let (mut def_len, mut rep_len) = (0i32, 0i32);
    let len = read_page_header(bytes, &mut |event| {
        let int = |v: i64| i32::try_from(v).map_err(|_| format!("{v} is not an i32"));
        match event {
            Event::Int(PAGE_HEADER_STRUCT, 1, v) => h.kind = int(v)?,
            Event::Int(PAGE_HEADER_STRUCT, 2, v) => h.uncompressed = int(v)?,
            Event::Int(PAGE_HEADER_STRUCT, 3, v) => h.compressed = int(v)?,
            Event::Int(DATA_PAGE_HEADER | DICTIONARY_PAGE_HEADER | DATA_PAGE_HEADER_V2, 1, v) => {
                h.num_values = int(v)?
            }
            Event::Int(DATA_PAGE_HEADER | DICTIONARY_PAGE_HEADER, 2, v)
            | Event::Int(DATA_PAGE_HEADER_V2, 4, v) => h.encoding = int(v)?,
            Event::Int(DATA_PAGE_HEADER, 4, v) => h.rep_level_encoding = int(v)?,
            // A v2 page's definition and repetition level bytes, and whether it compresses.
            Event::Int(DATA_PAGE_HEADER_V2, 5, v) => def_len = int(v)?,
            Event::Int(DATA_PAGE_HEADER_V2, 6, v) => rep_len = int(v)?,
            Event::Bool(DATA_PAGE_HEADER_V2, 7, b) => h.is_compressed = b,
            _ => {}
        }
        Ok(())
    })
    .ok()?;
    h.levels_len = def_len.checked_add(rep_len)?;
    (h.kind >= 0
        && h.uncompressed >= 0
        && h.compressed >= 0
        && h.num_values >= 0
        && def_len >= 0
        && rep_len >= 0)
        .then_some((h, len))
}

/// How many of the first `n` levels in an RLE/bit-packed hybrid run are 0 (for repetition
/// levels: how many rows start), with the bytes' `bit_width`. `None` when the runs end
/// before `n` levels or are malformed.
pub fn count_zero_levels(bytes: &[u8], bit_width: u32, n: usize) -> Option<usize> {
    if bit_width == 0 {
        return Some(n);
    }
    if bit_width > 32 {
        return None;
    }
    let mut c = Compact { buf: bytes, pos: 0 };
    let (mut seen, mut zeros) = (0usize, 0usize);
    let value_bytes = bit_width.div_ceil(8) as usize;
    while seen < n {
        let head = c.varint()?;
        let count = usize::try_from(head >> 1).ok()?;
        if head & 1 == 0 {
            // A run of `count` copies of one value.
            let start = c.pos;
            c.take(value_bytes as u64)?;
            let is_zero = bytes[start..c.pos].iter().all(|&b| b == 0);
            let take = count.min(n - seen);
            seen += take;
            zeros += if is_zero { take } else { 0 };
        } else {
            // `count` groups of 8 bit-packed values, least significant bit first.
            let len = count.checked_mul(bit_width as usize)?;
            let start = c.pos;
            c.take(len as u64)?;
            let packed = &bytes[start..c.pos];
            let values = (count * 8).min(n - seen);
            zeros += (0..values)
                .filter(|&i| read_bits(packed, i * bit_width as usize, bit_width) == 0)
                .count();
            seen += values;
        }
    }
    Some(zeros)
}

/// How many of the first `n` levels of the deprecated BIT_PACKED level encoding (most
/// significant bit first, no length prefix) are 0. `None` when the bytes are too few.
pub fn count_zero_bit_packed(bytes: &[u8], bit_width: u32, n: usize) -> Option<usize> {
    let bits = n.checked_mul(bit_width as usize)?;
    if bits.div_ceil(8) > bytes.len() || bit_width > 32 {
        return None;
    }
    Some(
        (0..n)
            .filter(|&i| {
                let at = i * bit_width as usize;
                (0..bit_width as usize).all(|b| {
                    let bit = at + b;
                    bytes[bit / 8] & (0x80 >> (bit % 8)) == 0
                })
            })
            .count(),
    )
}

/// The `width`-bit value (at most 64) at bit `at` of `packed`, least significant bit first
/// (bits past the end read as 0).
fn read_bits(packed: &[u8], at: usize, width: u32) -> u64 {
    let byte = at / 8;
    let mut word = [0u8; 16];
    if byte < packed.len() {
        let end = (byte + 9).min(packed.len());
        word[..end - byte].copy_from_slice(&packed[byte..end]);
    }
    let v = (u128::from_le_bytes(word) >> (at % 8)) as u64;
    match width {
        64 => v,
        w => v & ((1u64 << w) - 1),
    }
}

/// A DELTA_BINARY_PACKED stream's values, in turn: a header (block size, miniblocks per block,
/// value count, first value), then blocks of a minimum delta, the miniblocks' bit widths and
/// their packed deltas.
#[derive(Clone)]
struct DeltaBinaryPacked<'a> {
    c: Compact<'a>,
    /// Values not yet given.
    left: u64,
    /// The first value, before any block is read.
    first: Option<i64>,
    last: i64,
    per_miniblock: usize,
    miniblocks: usize,
    /// The current block: its minimum delta, its bit widths, the miniblock being read, the
    /// position of that miniblock's bits and the values read from it.
    min_delta: i64,
    widths: &'a [u8],
    miniblock: usize,
    bits_at: usize,
    in_miniblock: usize,
}

impl<'a> DeltaBinaryPacked<'a> {
    fn new(bytes: &'a [u8]) -> Option<Self> {
        let mut c = Compact { buf: bytes, pos: 0 };
        let block = usize::try_from(c.varint()?).ok()?;
        let miniblocks = usize::try_from(c.varint()?).ok()?;
        let left = c.varint()?;
        let z = c.varint()?;
        let first = (z >> 1) as i64 ^ -((z & 1) as i64);
        if block == 0 || miniblocks == 0 || block % miniblocks != 0 || block > 1 << 20 {
            return None;
        }
        Some(DeltaBinaryPacked {
            c,
            left,
            first: Some(first),
            last: first,
            per_miniblock: block / miniblocks,
            miniblocks,
            min_delta: 0,
            widths: &[],
            miniblock: 0,
            bits_at: 0,
            in_miniblock: 0,
        })
    }

    /// The next value; `None` past the last value or when the stream is malformed.
    fn next_value(&mut self) -> Option<i64> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        if let Some(first) = self.first.take() {
            return Some(first);
        }
        if self.in_miniblock == self.per_miniblock || self.widths.is_empty() {
            self.next_miniblock()?;
        }
        let width = u32::from(self.widths[self.miniblock]);
        let start = self.bits_at;
        let packed = self.c.buf.get(start..)?;
        let delta = read_bits(packed, self.in_miniblock * width as usize, width);
        self.in_miniblock += 1;
        self.last = self
            .last
            .wrapping_add(self.min_delta)
            .wrapping_add(delta as i64);
        Some(self.last)
    }

    /// Moves to the next miniblock (reading a block header when the block is done) and past
    /// its bits, which must be present whole.
    fn next_miniblock(&mut self) -> Option<()> {
        if self.widths.is_empty() || self.miniblock + 1 == self.miniblocks {
            let z = self.c.varint()?;
            self.min_delta = (z >> 1) as i64 ^ -((z & 1) as i64);
            let at = self.c.pos;
            self.c.take(self.miniblocks as u64)?;
            self.widths = &self.c.buf[at..self.c.pos];
            self.miniblock = 0;
        } else {
            self.miniblock += 1;
        }
        let width = usize::from(self.widths[self.miniblock]);
        if width > 64 {
            return None;
        }
        self.bits_at = self.c.pos;
        self.c
            .take((self.per_miniblock * width).div_ceil(8) as u64)?;
        self.in_miniblock = 0;
        Some(())
    }
}

/// The bytes a DELTA_BYTE_ARRAY page's values decode to (`values`: the page's bytes after its
/// levels; at most `max_values` values), computed from its prefix and suffix lengths without
/// building the values. `None` when the page is malformed.
pub fn delta_byte_array_bytes(values: &[u8], max_values: usize) -> Option<u64> {
    let mut prefixes = DeltaBinaryPacked::new(values)?;
    let count = prefixes.left;
    if count > max_values as u64 {
        return None;
    }
    // The suffix lengths start where the prefix lengths end.
    let mut scan = prefixes.clone();
    for _ in 0..count {
        scan.next_value()?;
    }
    let suffix_at = scan.c.pos;
    let mut suffixes = DeltaBinaryPacked::new(&values[suffix_at..])?;
    if suffixes.left != count {
        return None;
    }
    let (mut previous, mut total, mut suffix_bytes) = (0u64, 0u64, 0u64);
    for _ in 0..count {
        let p = u64::try_from(prefixes.next_value()?).ok()?;
        let s = u64::try_from(suffixes.next_value()?).ok()?;
        if p > previous {
            return None;
        }
        previous = p.checked_add(s)?;
        total = total.checked_add(previous)?;
        suffix_bytes = suffix_bytes.checked_add(s)?;
    }
    // The suffixes themselves follow their lengths.
    let left = (values.len() - suffix_at - suffixes.c.pos) as u64;
    (suffix_bytes <= left).then_some(total)
}

/// The longest value of a PLAIN byte-array dictionary page holding `entries` values (each a
/// 4-byte little-endian length, then the bytes). `None` when the page is malformed.
pub fn longest_byte_array(page: &[u8], entries: usize) -> Option<usize> {
    let (mut pos, mut longest) = (0usize, 0usize);
    for _ in 0..entries {
        let len = u32::from_le_bytes(page.get(pos..pos + 4)?.try_into().ok()?) as usize;
        pos = pos.checked_add(4 + len)?;
        if pos > page.len() {
            return None;
        }
        longest = longest.max(len);
    }
    Some(longest)
}
