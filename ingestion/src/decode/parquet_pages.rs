//! Reads what a Parquet page says about itself without decoding it. In: the bytes of a
//! column chunk (a page header), a decompressed page's level bytes, a decompressed
//! dictionary page. Out: the header's kind, sizes, value count and encodings; how many rows a
//! page starts; the longest value a dictionary holds.
//!
//! Page headers are Thrift compact-protocol structs. The `parquet` crate's own reader is not
//! public, and it allocates the declared uncompressed size as soon as it has read a header;
//! [`super::parquet_bounds`] must see that size first. Every read here is bounded by the bytes
//! given: a malformed header is `None`, never a panic or an allocation.

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
/// when the bytes are not a complete, well-formed header.
pub fn page_header(bytes: &[u8]) -> Option<(PageHeader, usize)> {
    let mut c = Compact { buf: bytes, pos: 0 };
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
    c.fields(0, |c, id, ty| match (id, ty) {
        (1, I32) => c.i32().map(|v| h.kind = v),
        (2, I32) => c.i32().map(|v| h.uncompressed = v),
        (3, I32) => c.i32().map(|v| h.compressed = v),
        // DataPageHeader: num_values, encoding, definition and repetition level encodings.
        (5, STRUCT) => c.fields(1, |c, id, ty| match (id, ty) {
            (1, I32) => c.i32().map(|v| h.num_values = v),
            (2, I32) => c.i32().map(|v| h.encoding = v),
            (4, I32) => c.i32().map(|v| h.rep_level_encoding = v),
            _ => c.skip(ty, 2, false),
        }),
        // DictionaryPageHeader: num_values, encoding.
        (7, STRUCT) => c.fields(1, |c, id, ty| match (id, ty) {
            (1, I32) => c.i32().map(|v| h.num_values = v),
            (2, I32) => c.i32().map(|v| h.encoding = v),
            _ => c.skip(ty, 2, false),
        }),
        // DataPageHeaderV2: num_values, .., encoding (4), definition and repetition level
        // bytes (5, 6), is_compressed (7).
        (8, STRUCT) => c.fields(1, |c, id, ty| match (id, ty) {
            (1, I32) => c.i32().map(|v| h.num_values = v),
            (4, I32) => c.i32().map(|v| h.encoding = v),
            (5, I32) => c.i32().map(|v| def_len = v),
            (6, I32) => c.i32().map(|v| rep_len = v),
            (7, BOOL_TRUE | BOOL_FALSE) => {
                h.is_compressed = ty == BOOL_TRUE;
                Some(())
            }
            _ => c.skip(ty, 2, false),
        }),
        _ => c.skip(ty, 1, false),
    })?;
    h.levels_len = def_len.checked_add(rep_len)?;
    (h.kind >= 0
        && h.uncompressed >= 0
        && h.compressed >= 0
        && h.num_values >= 0
        && def_len >= 0
        && rep_len >= 0)
        .then_some((h, c.pos))
}

/// Whether `bytes` are one well-formed Thrift compact struct (a file footer) in which no list,
/// set or map declares more entries than the bytes after it could hold. The `parquet` crate
/// allocates a list's declared length before reading its entries.
pub fn well_formed_struct(bytes: &[u8]) -> bool {
    let mut c = Compact { buf: bytes, pos: 0 };
    c.fields(0, |c, _, ty| c.skip(ty, 1, false)).is_some()
}

/// Thrift compact-protocol type ids used here.
const BOOL_TRUE: u8 = 1;
const BOOL_FALSE: u8 = 2;
const I32: u8 = 5;
const STRUCT: u8 = 12;

/// Nesting deeper than this is refused (a page header nests three levels, a file footer about
/// a dozen: lists of row groups, of column chunks, of page encoding statistics).
const MAX_DEPTH: u32 = 64;

/// A cursor over compact-protocol bytes.
#[derive(Clone)]
struct Compact<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Compact<'_> {
    fn byte(&mut self) -> Option<u8> {
        let b = *self.buf.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..70).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f).checked_shl(shift)?;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    fn i32(&mut self) -> Option<i32> {
        let v = self.varint()?;
        i32::try_from((v >> 1) as i64 ^ -((v & 1) as i64)).ok()
    }

    fn take(&mut self, n: u64) -> Option<()> {
        let end = self.pos.checked_add(usize::try_from(n).ok()?)?;
        (end <= self.buf.len()).then(|| self.pos = end)
    }

    /// Reads a struct's fields up to its stop byte, handing each field's id and type to `f`
    /// (which reads or skips its value).
    fn fields(
        &mut self,
        depth: u32,
        mut f: impl FnMut(&mut Self, i16, u8) -> Option<()>,
    ) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        let mut last = 0i16;
        loop {
            let b = self.byte()?;
            if b == 0 {
                return Some(());
            }
            let ty = b & 0x0f;
            let id = match b >> 4 {
                0 => i16::try_from(self.i32()?).ok()?,
                delta => last.checked_add(i16::from(delta))?,
            };
            last = id;
            f(self, id, ty)?;
        }
    }

    /// Skips a value of type `ty`. A boolean field keeps its value in its type id; a boolean
    /// element of a list takes a byte.
    fn skip(&mut self, ty: u8, depth: u32, element: bool) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        match ty {
            BOOL_TRUE | BOOL_FALSE if !element => Some(()),
            BOOL_TRUE | BOOL_FALSE | 3 => self.take(1),
            4..=6 => self.varint().map(|_| ()),
            7 => self.take(8),
            8 => {
                let n = self.varint()?;
                self.take(n)
            }
            9 | 10 => {
                let head = self.byte()?;
                let n = match head >> 4 {
                    15 => self.varint()?,
                    n => u64::from(n),
                };
                self.elements(n, &[head & 0x0f], depth)
            }
            11 => {
                let n = self.varint()?;
                if n == 0 {
                    return Some(());
                }
                let kv = self.byte()?;
                self.elements(n, &[kv >> 4, kv & 0x0f], depth)
            }
            STRUCT => self.fields(depth + 1, |c, _, ty| c.skip(ty, depth + 1, false)),
            _ => None,
        }
    }

    /// Skips `n` elements of the given types in turn. Every element takes at least a byte, so
    /// a count beyond the bytes left is malformed (and never loops long).
    fn elements(&mut self, n: u64, types: &[u8], depth: u32) -> Option<()> {
        if n > (self.buf.len() - self.pos) as u64 {
            return None;
        }
        for _ in 0..n {
            for &ty in types {
                self.skip(ty, depth + 1, true)?;
            }
        }
        Some(())
    }
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
