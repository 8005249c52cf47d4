//! Posting tables: one doc-id list per dictionary id (inverted index) or per range bucket.
//! In: roaring bitmaps at build time; a table section's bytes and an entry number at read
//! time. Out: the section bytes; a validated [`RoaringBitmap`] per entry.
//!
//! Format 1 stores every entry as a portable roaring bitmap behind a table of u64 offsets —
//! about 25 bytes even for a single doc, which dominated high-cardinality indexes. Format 2
//! bit-packs the offsets and stores each entry as a delta-varint list (`0x00 n first gap*`)
//! when that is small, or as a portable roaring bitmap (`0x01 roaring`).

use roaring::RoaringBitmap;

use crate::bitpack;
use crate::error::{corrupt, Result, SegmentError};

const TAG_LIST: u8 = 0;
const TAG_ROARING: u8 = 1;

fn put_varint(out: &mut Vec<u8>, mut v: u32) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(bytes: &[u8], pos: &mut usize) -> Result<u32> {
    let mut v: u64 = 0;
    for shift in (0..35).step_by(7) {
        let b = *bytes
            .get(*pos)
            .ok_or_else(|| corrupt("posting list ends inside a number"))?;
        *pos += 1;
        v |= ((b & 0x7f) as u64) << shift;
        if b & 0x80 == 0 {
            return u32::try_from(v).map_err(|_| corrupt("posting list number over 32 bits"));
        }
    }
    Err(corrupt("posting list number is too long"))
}

/// Lists up to this many docs are kept as lists whenever they are smaller than the bitmap.
const SHORT_LIST: u64 = 64;

/// One entry: a short list when it is smaller, a longer list only when it is at most half the
/// bitmap (lists decode doc by doc, bitmaps are copied in bulk — selective queries read the
/// long lists of common values).
fn encode_entry(bm: &RoaringBitmap, out: &mut Vec<u8>) -> Result<()> {
    let bitmap_len = bm.serialized_size();
    let budget = if bm.len() <= SHORT_LIST {
        bitmap_len
    } else {
        bitmap_len / 2
    };
    let mut list = Vec::new();
    put_varint(&mut list, bm.len() as u32);
    let mut prev = None;
    for d in bm {
        put_varint(&mut list, prev.map_or(d, |p| d - p));
        prev = Some(d);
        if list.len() > budget {
            break;
        }
    }
    if list.len() <= budget {
        out.push(TAG_LIST);
        out.extend_from_slice(&list);
    } else {
        out.push(TAG_ROARING);
        bm.serialize_into(&mut *out)
            .map_err(SegmentError::Compress)?;
    }
    Ok(())
}

/// Format 2 table: `count:u32 width:u8 packed_offsets entries`, offsets (count + 1 of them,
/// relative to the first entry) bit-packed like dictionary ids.
pub(crate) fn encode_table(bms: &[RoaringBitmap]) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    let mut offsets = Vec::with_capacity(bms.len() + 1);
    offsets.push(0u32);
    for bm in bms {
        encode_entry(bm, &mut body)?;
        offsets.push(
            u32::try_from(body.len())
                .map_err(|_| corrupt("posting table over 4 GiB cannot be written"))?,
        );
    }
    let width = bitpack::width_for(body.len() + 1);
    let packed = bitpack::pack(&offsets, width);
    let mut raw = Vec::with_capacity(5 + packed.len() + body.len());
    raw.extend_from_slice(&(bms.len() as u32).to_le_bytes());
    raw.push(width);
    raw.extend_from_slice(&packed);
    raw.extend_from_slice(&body);
    Ok(raw)
}

/// Parses a table's header: where entries start and their offsets (relative to that start).
pub(crate) fn parse_table(raw: &[u8], version: u32, what: &str) -> Result<(usize, Vec<u64>)> {
    if raw.len() < 4 {
        return Err(corrupt(format!("{what} is shorter than its header")));
    }
    let count = u32::from_le_bytes(raw[..4].try_into().expect("4 bytes")) as usize;
    // Every entry takes at least one byte, so a count past the section length is corrupt
    // (and must not size an allocation).
    if count > raw.len() {
        return Err(corrupt(format!(
            "{what} claims {count} entries in {} bytes",
            raw.len()
        )));
    }
    let n = count + 1;
    let (table_end, offsets) = if version >= 2 {
        let width = *raw
            .get(4)
            .ok_or_else(|| corrupt(format!("{what} is shorter than its header")))?;
        let len = n
            .checked_mul(width as usize)
            .map(|bits| bits.div_ceil(64) * 8)
            .ok_or_else(|| corrupt(format!("{what}: count overflows")))?;
        let end = 5usize
            .checked_add(len)
            .filter(|&e| e <= raw.len())
            .ok_or_else(|| corrupt(format!("{what} offsets table is truncated")))?;
        let mut offs = Vec::with_capacity(n);
        bitpack::unpack_into(&raw[5..end], n, width, &mut offs)?;
        (end, offs.into_iter().map(u64::from).collect::<Vec<_>>())
    } else {
        let end = n
            .checked_mul(8)
            .and_then(|l| l.checked_add(4))
            .filter(|&e| e <= raw.len())
            .ok_or_else(|| corrupt(format!("{what} offsets table is truncated")))?;
        let offs = raw[4..end]
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        (end, offs)
    };
    let body = (raw.len() - table_end) as u64;
    if offsets.first() != Some(&0)
        || offsets.windows(2).any(|w| w[0] > w[1])
        || offsets.last().is_some_and(|&l| l > body)
    {
        return Err(corrupt(format!(
            "{what} offsets are not ascending within the section"
        )));
    }
    Ok((table_end, offsets))
}

/// Decodes one entry; every doc must be below `rows`.
pub(crate) fn decode_entry(bytes: &[u8], version: u32, rows: u64) -> Result<RoaringBitmap> {
    let bm = if version >= 2 {
        match bytes.split_first() {
            Some((&TAG_LIST, rest)) => {
                let mut pos = 0;
                let n = get_varint(rest, &mut pos)?;
                let mut docs = Vec::with_capacity((n as usize).min(rest.len()));
                let mut prev: Option<u32> = None;
                for _ in 0..n {
                    let v = get_varint(rest, &mut pos)?;
                    let d = match prev {
                        None => v,
                        Some(p) if v > 0 => p
                            .checked_add(v)
                            .ok_or_else(|| corrupt("posting list overflows doc ids"))?,
                        Some(_) => return Err(corrupt("posting list repeats a doc")),
                    };
                    docs.push(d);
                    prev = Some(d);
                }
                if pos != rest.len() {
                    return Err(corrupt("posting list has trailing bytes"));
                }
                RoaringBitmap::from_sorted_iter(docs)
                    .map_err(|e| corrupt(format!("posting list: {e}")))?
            }
            Some((&TAG_ROARING, rest)) => RoaringBitmap::deserialize_from(rest)
                .map_err(|e| corrupt(format!("posting bitmap: {e}")))?,
            Some((tag, _)) => return Err(corrupt(format!("posting entry tag {tag}"))),
            None => return Err(corrupt("empty posting entry")),
        }
    } else {
        RoaringBitmap::deserialize_from(bytes).map_err(|e| corrupt(format!("index bitmap: {e}")))?
    };
    if bm.max().is_some_and(|m| m as u64 >= rows) {
        return Err(corrupt("posting entry names a doc past the end"));
    }
    Ok(bm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn tables_round_trip(lists in prop::collection::vec(
            prop::collection::btree_set(0u32..200_000, 0..300), 0..40)
        ) {
            let bms: Vec<RoaringBitmap> =
                lists.iter().map(|l| l.iter().copied().collect()).collect();
            let raw = encode_table(&bms).unwrap();
            let (start, offsets) = parse_table(&raw, 2, "t").unwrap();
            prop_assert_eq!(offsets.len(), bms.len() + 1);
            for (i, bm) in bms.iter().enumerate() {
                let e = &raw[start + offsets[i] as usize..start + offsets[i + 1] as usize];
                prop_assert_eq!(&decode_entry(e, 2, 200_000).unwrap(), bm);
            }
        }

        #[test]
        fn corrupt_entries_are_errors(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_entry(&bytes, 2, 1000);
            let _ = parse_table(&bytes, 2, "t");
        }
    }

    #[test]
    fn small_lists_are_smaller_than_bitmaps() {
        let one: RoaringBitmap = [123_456u32].into_iter().collect();
        let mut out = Vec::new();
        encode_entry(&one, &mut out).unwrap();
        assert_eq!(out[0], TAG_LIST);
        assert!(out.len() <= 5, "{out:?}");
        let dense: RoaringBitmap = (0..200_000u32).collect();
        out.clear();
        encode_entry(&dense, &mut out).unwrap();
        assert_eq!(out[0], TAG_ROARING);
    }
}
