//! Raw string blocks of format 6 (`Encoding::RawStrings`: near-unique STRING and JSON columns
//! without an inverted or sorted index, such as event ids). In: one block's values, `None`
//! for null rows. Out: frames of [`FRAME_ROWS`] rows, each `width:u8 len:uW{rows} bytes`,
//! zstd-compressed on their own, and back: every row as an Arrow `StringArray` (null rows
//! read as empty strings; the null bitmap says which they are), picked rows, a scan, or the
//! rows equal to given values.
//!
//! A dictionary over values that hardly repeat stores every value once anyway, plus an id per
//! row; without it the block is smaller (no ids) and a row is read without the dictionary.
//! Also here: the length tables shared with front-coded dictionaries, and the order-preserving
//! prefix key that gives these blocks zone maps.

use arrow::array::StringArray;
use arrow::buffer::{Buffer, OffsetBuffer, ScalarBuffer};

use std::borrow::Cow;

use crate::error::{corrupt, Result};

/// Bytes per length (1, 2 or 4) for lengths up to `longest`.
pub(crate) fn length_width(longest: usize) -> u8 {
    if longest <= u8::MAX as usize {
        1
    } else if longest <= u16::MAX as usize {
        2
    } else {
        4
    }
}

/// Appends each length in `width` little-endian bytes.
pub(crate) fn put_lengths(out: &mut Vec<u8>, lens: &[u32], width: u8) {
    for &l in lens {
        out.extend_from_slice(&l.to_le_bytes()[..width as usize]);
    }
}

/// Length `i` of a table of `width`-byte lengths (the caller checked the table's size).
pub(crate) fn length_at(lens: &[u8], width: usize, i: usize) -> usize {
    let mut b = [0u8; 4];
    b[..width].copy_from_slice(&lens[i * width..(i + 1) * width]);
    u32::from_le_bytes(b) as usize
}

/// An order-preserving key of a string's first 8 bytes: `a <= b` implies
/// `prefix_key(a) <= prefix_key(b)`. Zone maps of raw string blocks hold these.
pub fn prefix_key(s: &[u8]) -> i64 {
    let mut b = [0u8; 8];
    let n = s.len().min(8);
    b[..n].copy_from_slice(&s[..n]);
    (u64::from_be_bytes(b) ^ (1 << 63)) as i64
}

/// Encodes one frame's rows.
fn encode_frame<'a>(values: impl Iterator<Item = Option<&'a str>> + Clone) -> Vec<u8> {
    let lens: Vec<u32> = values
        .clone()
        .map(|v| v.map_or(0, |s| s.len() as u32))
        .collect();
    let width = length_width(lens.iter().copied().max().unwrap_or(0) as usize);
    let total: usize = lens.iter().map(|&l| l as usize).sum();
    let mut out = Vec::with_capacity(1 + lens.len() * width as usize + total);
    out.push(width);
    put_lengths(&mut out, &lens, width);
    for v in values.flatten() {
        out.extend_from_slice(v.as_bytes());
    }
    out
}

/// A frame's lengths table (`width` bytes each) and its bytes, checked against `rows` (the
/// lengths themselves are checked as [`ends`] walks them).
fn parse<'a>(raw: &'a [u8], rows: usize, what: &str) -> Result<(usize, &'a [u8], &'a [u8])> {
    let width =
        *raw.first()
            .ok_or_else(|| corrupt(format!("{what} is shorter than its header")))? as usize;
    if !matches!(width, 1 | 2 | 4) {
        return Err(corrupt(format!("{what} length width {width}")));
    }
    let bytes_at = rows
        .checked_mul(width)
        .and_then(|l| l.checked_add(1))
        .filter(|&e| e <= raw.len())
        .ok_or_else(|| corrupt(format!("{what} lengths are truncated")))?;
    let data = &raw[bytes_at..];
    if data.len() > i32::MAX as usize {
        return Err(corrupt(format!("{what} is over 2 GiB of strings")));
    }
    // `ends` checks the lengths add up to the bytes at the last row; without rows, here.
    if rows == 0 && !data.is_empty() {
        return Err(corrupt(format!(
            "{what} lengths do not add up to its bytes"
        )));
    }
    Ok((width, &raw[1..bytes_at], data))
}

/// Row `i`'s end offset is checked against the bytes; the lengths must use them all.
fn ends<'a>(
    width: usize,
    lens: &'a [u8],
    data_len: usize,
    rows: usize,
    what: &'a str,
) -> impl Iterator<Item = Result<usize>> + 'a {
    let mut end = 0usize;
    (0..rows).map(move |i| {
        end += length_at(lens, width, i);
        if end > data_len {
            return Err(corrupt(format!("{what} lengths exceed its bytes")));
        }
        if i + 1 == rows && end != data_len {
            return Err(corrupt(format!(
                "{what} lengths do not add up to its bytes"
            )));
        }
        Ok(end)
    })
}

/// Every row of a frame of `rows` rows.
fn decode_frame(raw: &[u8], rows: usize, what: &str) -> Result<StringArray> {
    let (width, lens, data) = parse(raw, rows, what)?;
    let mut offsets: Vec<i32> = Vec::with_capacity(rows + 1);
    offsets.push(0);
    for end in ends(width, lens, data.len(), rows, what) {
        offsets.push(end? as i32);
    }
    let offsets = OffsetBuffer::new(ScalarBuffer::from(offsets));
    StringArray::try_new(offsets, Buffer::from(data), None)
        .map_err(|e| corrupt(format!("{what}: {e}")))
}

/// Rows `picked` (ascending, each below `rows`) of a frame, without validating or copying the
/// others.
fn pick_frame(raw: &[u8], rows: usize, picked: &[usize], what: &str) -> Result<StringArray> {
    let (width, lens, data) = parse(raw, rows, what)?;
    let mut out = arrow::array::StringBuilder::with_capacity(picked.len(), picked.len() * 16);
    let mut next = picked.iter().peekable();
    let mut start = 0usize;
    for (row, end) in ends(width, lens, data.len(), rows, what).enumerate() {
        let end = end?;
        while next.next_if(|&&k| k == row).is_some() {
            let v = std::str::from_utf8(&data[start..end])
                .map_err(|e| corrupt(format!("{what}: row {row}: {e}")))?;
            out.append_value(v);
        }
        if next.peek().is_none() {
            break;
        }
        start = end;
    }
    if next.peek().is_some() {
        return Err(corrupt(format!("{what}: a picked row is past the block")));
    }
    Ok(out.finish())
}

/// Calls `f(row, value)` for every row of a frame in order, without building an array.
fn for_each_frame(
    raw: &[u8],
    rows: usize,
    what: &str,
    mut f: impl FnMut(usize, &str),
) -> Result<()> {
    let (width, lens, data) = parse(raw, rows, what)?;
    let data = std::str::from_utf8(data).map_err(|e| corrupt(format!("{what}: {e}")))?;
    let mut start = 0usize;
    for (i, end) in ends(width, lens, data.len(), rows, what).enumerate() {
        let end = end?;
        let value = data
            .get(start..end)
            .ok_or_else(|| corrupt(format!("{what}: row {i} splits a character")))?;
        f(i, value);
        start = end;
    }
    Ok(())
}

/// Calls `f(row)`, ascending, for every row of a frame whose value is exactly one of
/// `needles` (distinct, non-empty). The frame's bytes are searched for each needle (SIMD
/// substring search) and only the hits are matched to rows, instead of comparing row by row.
fn find_equal_frame(
    raw: &[u8],
    rows: usize,
    what: &str,
    needles: &[&[u8]],
    mut f: impl FnMut(usize),
) -> Result<()> {
    let (width, lens, data) = parse(raw, rows, what)?;
    let mut hits: Vec<(usize, usize)> = Vec::new();
    for n in needles {
        // Overlapping occurrences too: a row may start inside an earlier occurrence.
        let finder = memchr::memmem::Finder::new(n);
        let mut from = 0;
        while let Some(i) = finder.find(&data[from..]) {
            hits.push((from + i, n.len()));
            from += i + 1;
        }
    }
    if hits.is_empty() {
        return Ok(());
    }
    hits.sort_unstable();
    let mut next = hits.iter().peekable();
    let mut start = 0usize;
    for (row, end) in ends(width, lens, data.len(), rows, what).enumerate() {
        let end = end?;
        // Hits that begin before this row cannot be a whole row. An empty row matches no
        // needle and leaves the hits at its offset to the next row.
        while next.next_if(|&&(at, _)| at < start).is_some() {}
        if end > start {
            let mut whole = false;
            while let Some(&(_, len)) = next.next_if(|&&(at, _)| at == start) {
                whole |= len == end - start;
            }
            if whole {
                f(row);
            }
        }
        start = end;
        if next.peek().is_none() {
            break;
        }
    }
    Ok(())
}

/// Rows per frame: a few picked rows decompress one frame (about 33 KB of 32-byte ids), not
/// the whole block. Smaller frames also compress slightly better here (16.31 against 16.43
/// bytes per `event_id` on 1M generated events).
pub const FRAME_ROWS: usize = 1024;
/// frame_rows + count.
const BLOCK_HEADER: usize = 8;
/// codec + stored_len + raw_len.
const FRAME_ENTRY: usize = 9;
/// Upper bound on one frame's decoded size.
const MAX_FRAME_BYTES: u64 = 1 << 31;

/// Encodes one block: `frame_rows:u32 count:u32 (codec:u8 stored_len:u32 raw_len:u32){count}`
/// then the frames, each zstd-compressed at `level` (codec 1) when that makes it smaller.
pub fn encode<'a>(
    values: impl Iterator<Item = Option<&'a str>> + Clone,
    level: Option<i32>,
) -> Result<Vec<u8>> {
    let all: Vec<Option<&str>> = values.collect();
    let chunks: Vec<&[Option<&str>]> = all.chunks(FRAME_ROWS).collect();
    let mut head = Vec::with_capacity(BLOCK_HEADER + chunks.len() * FRAME_ENTRY);
    head.extend_from_slice(&(FRAME_ROWS as u32).to_le_bytes());
    head.extend_from_slice(&(chunks.len() as u32).to_le_bytes());
    let mut body = Vec::new();
    for chunk in chunks {
        let raw = encode_frame(chunk.iter().copied());
        let compressed = match level {
            Some(l) => Some(crate::layout::zstd_encode(&raw, l)?).filter(|c| c.len() < raw.len()),
            None => None,
        };
        let stored = compressed.as_deref().unwrap_or(&raw);
        head.push(compressed.is_some() as u8);
        head.extend_from_slice(&(stored.len() as u32).to_le_bytes());
        head.extend_from_slice(&(raw.len() as u32).to_le_bytes());
        body.extend_from_slice(stored);
    }
    head.extend(body);
    Ok(head)
}

/// One frame of a block: its first row, row count, and stored bytes.
struct Frame<'a> {
    first: usize,
    rows: usize,
    zstd: bool,
    stored: &'a [u8],
    raw_len: usize,
}

impl Frame<'_> {
    /// The frame's rows as `width len bytes`, decompressed if need be.
    fn content(&self, what: &str) -> Result<Cow<'_, [u8]>> {
        if !self.zstd {
            return Ok(Cow::Borrowed(self.stored));
        }
        let out = crate::layout::zstd_decode(self.stored, self.raw_len as u64, what)?;
        if out.len() != self.raw_len {
            return Err(corrupt(format!(
                "{what}: a frame decoded to {} bytes, its header says {}",
                out.len(),
                self.raw_len
            )));
        }
        Ok(Cow::Owned(out))
    }
}

/// The frames of a block of `rows` rows, checked against its header.
fn frames<'a>(raw: &'a [u8], rows: usize, what: &str) -> Result<Vec<Frame<'a>>> {
    let u32_at = |at: usize| -> Result<usize> {
        raw.get(at..at + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
            .ok_or_else(|| corrupt(format!("{what}: frame table is truncated")))
    };
    let (frame_rows, count) = (u32_at(0)?, u32_at(4)?);
    if frame_rows == 0 || count != rows.div_ceil(frame_rows) {
        return Err(corrupt(format!(
            "{what}: {count} frames of {frame_rows} rows for {rows} rows"
        )));
    }
    let mut at = count
        .checked_mul(FRAME_ENTRY)
        .and_then(|t| t.checked_add(BLOCK_HEADER))
        .filter(|&e| e <= raw.len())
        .ok_or_else(|| corrupt(format!("{what}: frame table is truncated")))?;
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let entry = BLOCK_HEADER + i * FRAME_ENTRY;
        let zstd = match raw[entry] {
            0 => false,
            1 => true,
            c => return Err(corrupt(format!("{what}: frame codec {c}"))),
        };
        let (stored_len, raw_len) = (u32_at(entry + 1)?, u32_at(entry + 5)?);
        if raw_len as u64 > MAX_FRAME_BYTES {
            return Err(corrupt(format!("{what}: a frame claims {raw_len} bytes")));
        }
        let stored = raw
            .get(at..at + stored_len)
            .ok_or_else(|| corrupt(format!("{what}: frame {i} is truncated")))?;
        at += stored_len;
        let first = i * frame_rows;
        out.push(Frame {
            first,
            rows: frame_rows.min(rows - first),
            zstd,
            stored,
            raw_len,
        });
    }
    if at != raw.len() {
        return Err(corrupt(format!("{what}: bytes after the last frame")));
    }
    Ok(out)
}

/// Every row of a block of `rows` rows.
pub fn decode(raw: &[u8], rows: usize, what: &str) -> Result<StringArray> {
    let mut parts = Vec::new();
    for f in frames(raw, rows, what)? {
        parts.push(decode_frame(&f.content(what)?, f.rows, what)?);
    }
    concat_strings(parts)
}

fn concat_strings(parts: Vec<StringArray>) -> Result<StringArray> {
    if parts.len() == 1 {
        return Ok(parts.into_iter().next().expect("one part"));
    }
    let refs: Vec<&dyn arrow::array::Array> = parts
        .iter()
        .map(|a| a as &dyn arrow::array::Array)
        .collect();
    if refs.is_empty() {
        return Ok(StringArray::from(Vec::<&str>::new()));
    }
    let all = arrow::compute::concat(&refs)?;
    Ok(arrow::array::AsArray::as_string::<i32>(&all).clone())
}

/// Rows `picked` (ascending, each below `rows`) of a block: only the frames holding them are
/// decompressed, and only those rows validated and copied.
pub fn pick(raw: &[u8], rows: usize, picked: &[usize], what: &str) -> Result<StringArray> {
    let mut parts = Vec::new();
    let mut rest = picked;
    for f in frames(raw, rows, what)? {
        let n = rest.partition_point(|&k| k < f.first + f.rows);
        let (here, later) = rest.split_at(n);
        rest = later;
        if here.is_empty() {
            continue;
        }
        let local: Vec<usize> = here.iter().map(|&k| k - f.first).collect();
        parts.push(pick_frame(&f.content(what)?, f.rows, &local, what)?);
    }
    if !rest.is_empty() {
        return Err(corrupt(format!("{what}: a picked row is past the block")));
    }
    concat_strings(parts)
}

/// Calls `f(row, value)` for every row of a block in order, without building an array
/// (filter scans).
pub fn for_each(raw: &[u8], rows: usize, what: &str, mut f: impl FnMut(usize, &str)) -> Result<()> {
    for fr in frames(raw, rows, what)? {
        for_each_frame(&fr.content(what)?, fr.rows, what, |i, s| f(fr.first + i, s))?;
    }
    Ok(())
}

/// Calls `f(row)`, ascending, for every row of a block whose value is exactly one of
/// `needles` (distinct, non-empty), frame by frame (see `find_equal_frame`).
pub fn find_equal(
    raw: &[u8],
    rows: usize,
    what: &str,
    needles: &[&[u8]],
    mut f: impl FnMut(usize),
) -> Result<()> {
    for fr in frames(raw, rows, what)? {
        find_equal_frame(&fr.content(what)?, fr.rows, what, needles, |i| {
            f(fr.first + i)
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Array;
    use proptest::prelude::*;

    fn found_by_search(raw: &[u8], values: &[Option<String>], needles: &[&[u8]]) -> Vec<usize> {
        let mut found = Vec::new();
        find_equal(raw, values.len(), "t", needles, |r| found.push(r)).unwrap();
        found
    }

    fn found_by_rows(values: &[Option<String>], needles: &[&[u8]]) -> Vec<usize> {
        let hit = |v: &Option<String>| {
            v.as_deref()
                .is_some_and(|v| needles.contains(&v.as_bytes()))
        };
        (0..values.len()).filter(|&i| hit(&values[i])).collect()
    }

    proptest! {
        #[test]
        fn round_trip(
            values in proptest::collection::vec(proptest::option::of(".{0,12}"), 0..2600),
            compress in any::<bool>(),
        ) {
            // Several frames when over FRAME_ROWS values; compressed or stored as they are.
            let raw = encode(values.iter().map(|v| v.as_deref()), compress.then_some(3)).unwrap();
            let back = decode(&raw, values.len(), "t").unwrap();
            prop_assert_eq!(back.len(), values.len());
            for (i, v) in values.iter().enumerate() {
                prop_assert_eq!(back.value(i), v.as_deref().unwrap_or(""));
            }
            let mut seen = Vec::new();
            for_each(&raw, values.len(), "t", |i, s| seen.push((i, s.to_string()))).unwrap();
            let want: Vec<(usize, String)> = values
                .iter()
                .enumerate()
                .map(|(i, v)| (i, v.clone().unwrap_or_default()))
                .collect();
            prop_assert_eq!(seen, want);
            let every_other: Vec<usize> = (0..values.len()).step_by(7).collect();
            let some = pick(&raw, values.len(), &every_other, "t").unwrap();
            for (j, &i) in every_other.iter().enumerate() {
                prop_assert_eq!(some.value(j), values[i].as_deref().unwrap_or(""));
            }
            // Exact-match search agrees with comparing every row.
            let needles: Vec<String> = values.iter().flatten().take(2).filter(|s| !s.is_empty()).cloned().collect();
            let mut needles: Vec<&[u8]> = needles.iter().map(|s| s.as_bytes()).collect();
            needles.dedup();
            prop_assert_eq!(found_by_search(&raw, &values, &needles), found_by_rows(&values, &needles));
        }

        #[test]
        fn find_equal_matches_row_comparison(
            values in proptest::collection::vec(proptest::option::of("[ab]{0,3}"), 0..60),
            needles in proptest::collection::btree_set("[ab]{1,3}", 0..4),
        ) {
            let raw = encode(values.iter().map(|v| v.as_deref()), Some(3)).unwrap();
            let needles: Vec<&[u8]> = needles.iter().map(|s| s.as_bytes()).collect();
            prop_assert_eq!(found_by_search(&raw, &values, &needles), found_by_rows(&values, &needles));
        }

        #[test]
        fn corrupt_blocks_are_errors(bytes in proptest::collection::vec(any::<u8>(), 0..200), rows in 0usize..50) {
            // Both readers agree on what is corrupt, and what decodes has the rows asked for.
            let decoded = decode(&bytes, rows, "t");
            let b = for_each(&bytes, rows, "t", |_, _| {}).is_ok();
            prop_assert_eq!(decoded.is_ok(), b);
            if let Ok(a) = decoded {
                prop_assert_eq!(a.len(), rows);
            }
        }

        #[test]
        fn prefix_keys_keep_order(a in proptest::collection::vec(any::<u8>(), 0..12), b in proptest::collection::vec(any::<u8>(), 0..12)) {
            if a <= b {
                prop_assert!(prefix_key(&a) <= prefix_key(&b));
            }
        }
    }

    #[test]
    fn equal_rows_are_found_inside_overlapping_occurrences() {
        let raw = encode(
            ["a", "aa", "aaa", "aa", "", "b"].into_iter().map(Some),
            None,
        )
        .unwrap();
        let mut rows = Vec::new();
        find_equal(&raw, 6, "t", &[b"aa"], |r| rows.push(r)).unwrap();
        assert_eq!(rows, vec![1, 3]);
        rows.clear();
        find_equal(&raw, 6, "t", &[b"b", b"a", b"aaa"], |r| rows.push(r)).unwrap();
        assert_eq!(rows, vec![0, 2, 5]);
    }

    #[test]
    fn long_values_take_wider_lengths() {
        let long = "x".repeat(70_000);
        let values = [Some("a"), None, Some(long.as_str())];
        assert_eq!(encode_frame(values.into_iter())[0], 4);
        let raw = encode(values.into_iter(), Some(3)).unwrap();
        let back = decode(&raw, 3, "t").unwrap();
        assert_eq!(back.value(2).len(), 70_000);
        assert!(decode(&raw, 4, "t").is_err());
        assert!(decode(&raw[..raw.len() - 1], 3, "t").is_err());
        assert!(for_each(&raw[..raw.len() - 1], 3, "t", |_, _| {}).is_err());
    }
}
