//! Posting tables: one doc-id list per dictionary id (inverted index) or per range bucket.
//! In: roaring bitmaps at build time; a table section's bytes and an entry number at read
//! time. Out: the section bytes; a validated [`RoaringBitmap`] per entry.
//!
//! Format 1 stores every entry as a portable roaring bitmap behind a table of u64 offsets —
//! about 25 bytes even for a single doc, which dominated high-cardinality indexes. Format 2
//! bit-packs the offsets and stores each entry as a delta-varint list (`0x00 n first gap*`)
//! when that is small, or as a portable roaring bitmap (`0x01 roaring`). Format 4 adds a
//! Rice-coded list (`0x80|k bits`, see [`crate::rice`]): about `log2(rows / docs) + 1.6` bits
//! per doc, against 8–24 for a varint gap and 16 for a roaring array container. Each entry
//! takes the smallest of the three forms its table allows (see [`TableKind`]).

use roaring::RoaringBitmap;

use crate::bitpack;
use crate::error::{corrupt, Result, SegmentError};
use crate::rice;

const TAG_LIST: u8 = 0;
const TAG_ROARING: u8 = 1;
/// Format 4: `TAG_RICE | k`, then the Rice-coded gaps with parameter `k` (0..=31).
const TAG_RICE: u8 = 0x80;

pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u32) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub(crate) fn get_varint(bytes: &[u8], pos: &mut usize) -> Result<u32> {
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

/// Lists up to this many docs are kept as varint lists whenever they are smaller than the
/// other forms.
const SHORT_LIST: u64 = 64;

/// Which entries of a table may be Rice-coded, by the docs in their densest 65,536-doc
/// container. Reading a Rice list costs about 3 ns per doc where a roaring array is copied,
/// so an inverted index keeps roaring for values a query may match thousands of docs of
/// (over 1 doc in 128 anywhere) and codes the long tail; a range index, whose buckets are
/// read many at a time under a scan anyway, codes every list sparse enough for roaring arrays.
#[derive(Debug, Clone, Copy)]
pub(crate) enum TableKind {
    Inverted,
    Range,
}

impl TableKind {
    fn rice_max_container(self) -> u64 {
        match self {
            TableKind::Inverted => 512,
            TableKind::Range => 4096,
        }
    }
}

/// The most docs ascending `docs` holds in one 65,536-doc container.
fn densest_container(docs: &[u32]) -> u64 {
    let (mut best, mut run, mut key) = (0u64, 0u64, None);
    for &d in docs {
        if key != Some(d >> 16) {
            key = Some(d >> 16);
            run = 0;
        }
        run += 1;
        best = best.max(run);
    }
    best
}

/// The docs of one entry as a roaring bitmap: built already, or to be built from the docs
/// only if the entry is stored in that form.
enum Roaring<'a> {
    Built(&'a RoaringBitmap),
    FromDocs,
}

/// `RoaringBitmap::serialized_size` of the bitmap `from_sorted_iter` builds from ascending,
/// distinct `docs`, without building it: such a bitmap holds array containers (2 bytes a doc,
/// up to 4,096 docs) and bitmap containers (8 KiB), never runs, so its header is the no-run
/// form (8 bytes, then 8 a container).
fn roaring_size(docs: &[u32]) -> usize {
    let mut size = 8;
    let mut rest = docs;
    while let Some(&first) = rest.first() {
        let card = rest.partition_point(|&d| d >> 16 == first >> 16);
        size += 8 + if card <= 4096 { 2 * card } else { 8192 };
        rest = &rest[card..];
    }
    size
}

/// One entry (ascending `docs`, and the same docs as `bm` when it is built), in the smallest
/// form allowed: a varint list (short lists only: a longer one is decoded doc by doc and never
/// beats the Rice form), a Rice-coded list (see [`TableKind`]), or a roaring bitmap.
fn encode_entry(docs: &[u32], bm: Roaring<'_>, kind: TableKind, out: &mut Vec<u8>) -> Result<()> {
    let bitmap_len = match bm {
        Roaring::Built(bm) => bm.serialized_size(),
        Roaring::FromDocs => roaring_size(docs),
    };
    let rice_ok = densest_container(docs) <= kind.rice_max_container();
    let (k, rice_len) = if rice_ok {
        rice::choose(docs.iter().copied())
    } else {
        (0, usize::MAX)
    };
    if docs.len() as u64 <= SHORT_LIST {
        // Written in place, and taken back if another form is smaller.
        let at = out.len();
        out.push(TAG_LIST);
        put_varint(out, docs.len() as u32);
        let mut prev = None;
        for &d in docs {
            put_varint(out, prev.map_or(d, |p| d - p));
            prev = Some(d);
        }
        if out.len() - at - 1 <= bitmap_len.min(rice_len) {
            return Ok(());
        }
        out.truncate(at);
    }
    if rice_len < bitmap_len {
        out.push(TAG_RICE | k);
        rice::encode(docs.iter().copied(), k, out);
    } else {
        out.push(TAG_ROARING);
        let built;
        let bm = match bm {
            Roaring::Built(bm) => bm,
            Roaring::FromDocs => {
                built = RoaringBitmap::from_sorted_iter(docs.iter().copied())
                    .map_err(|_| corrupt("a posting list's docs are not ascending"))?;
                &built
            }
        };
        bm.serialize_into(&mut *out)
            .map_err(SegmentError::Compress)?;
    }
    Ok(())
}

/// Format 2 table: `count:u32 width:u8 packed_offsets entries`, offsets (count + 1 of them,
/// relative to the first entry) bit-packed like dictionary ids.
pub(crate) fn encode_table(bms: &[RoaringBitmap], kind: TableKind) -> Result<Vec<u8>> {
    let mut docs = Vec::new();
    table(bms.len(), |i, body| {
        docs.clear();
        docs.extend(bms[i].iter());
        encode_entry(&docs, Roaring::Built(&bms[i]), kind, body)
    })
}

/// Doc lists of every dictionary id in one allocation: id `i`'s docs, ascending, are
/// `docs[starts[i]..starts[i + 1]]`.
pub(crate) struct DocLists {
    starts: Vec<u32>,
    docs: Vec<u32>,
}

impl DocLists {
    /// The docs of each id in `0..cardinality` (`ids[doc]`), leaving out docs `skip` names;
    /// a counting sort, so each list comes out ascending.
    pub(crate) fn by_id(ids: &[u32], cardinality: usize, skip: impl Fn(usize) -> bool) -> Self {
        let mut starts = vec![0u32; cardinality + 1];
        for (doc, &id) in ids.iter().enumerate() {
            if !skip(doc) {
                starts[id as usize + 1] += 1;
            }
        }
        for i in 0..cardinality {
            starts[i + 1] += starts[i];
        }
        let mut next = starts.clone();
        let mut docs = vec![0u32; starts[cardinality] as usize];
        for (doc, &id) in ids.iter().enumerate() {
            if !skip(doc) {
                let at = &mut next[id as usize];
                docs[*at as usize] = doc as u32;
                *at += 1;
            }
        }
        DocLists { starts, docs }
    }

    fn entry(&self, i: usize) -> &[u32] {
        &self.docs[self.starts[i] as usize..self.starts[i + 1] as usize]
    }
}

/// [`encode_table`] of the bitmaps of `lists`' entries.
pub(crate) fn encode_lists(lists: &DocLists, kind: TableKind) -> Result<Vec<u8>> {
    table(lists.starts.len() - 1, |i, body| {
        encode_entry(lists.entry(i), Roaring::FromDocs, kind, body)
    })
}

/// A table of `count` entries, entry `i` appended to the body by `put(i, body)`.
fn table(count: usize, mut put: impl FnMut(usize, &mut Vec<u8>) -> Result<()>) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    let mut offsets = Vec::with_capacity(count + 1);
    offsets.push(0u32);
    for i in 0..count {
        put(i, &mut body)?;
        offsets.push(
            u32::try_from(body.len())
                .map_err(|_| corrupt("posting table over 4 GiB cannot be written"))?,
        );
    }
    let width = bitpack::width_for(body.len() + 1);
    let packed = bitpack::pack(&offsets, width);
    let mut raw = Vec::with_capacity(5 + packed.len() + body.len());
    raw.extend_from_slice(&(count as u32).to_le_bytes());
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
            Some((&tag, rest)) if version >= 4 && tag & TAG_RICE != 0 => {
                rice::decode_bitmap(rest, tag & !TAG_RICE, rows)?
            }
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

    /// [`encode_entry`] of a bitmap.
    fn entry_of(bm: &RoaringBitmap, kind: TableKind, out: &mut Vec<u8>) -> Result<()> {
        encode_entry(
            &bm.iter().collect::<Vec<_>>(),
            Roaring::Built(bm),
            kind,
            out,
        )
    }

    proptest! {
        /// An inverted index from per-doc ids (counting sort into doc lists) is the table of
        /// bitmaps built doc by doc, byte for byte; skipped (null) docs are in no list.
        #[test]
        fn doc_lists_encode_as_their_bitmaps(
            // Few ids give lists dense enough for roaring, many give varint and Rice lists.
            ids in (1u32..80).prop_flat_map(|c| prop::collection::vec(0..c, 0..3000)),
            skip_every in 2usize..9,
        ) {
            let cardinality = ids.iter().max().map_or(0, |m| *m as usize + 1);
            let skip = |doc: usize| doc.is_multiple_of(skip_every);
            let mut bms = vec![RoaringBitmap::new(); cardinality];
            for (doc, &id) in ids.iter().enumerate() {
                if !skip(doc) {
                    bms[id as usize].insert(doc as u32);
                }
            }
            let lists = DocLists::by_id(&ids, cardinality, skip);
            prop_assert_eq!(
                encode_lists(&lists, TableKind::Inverted).unwrap(),
                encode_table(&bms, TableKind::Inverted).unwrap()
            );
        }

        /// The size of a bitmap built from ascending docs, without building it, is roaring's
        /// own: sparse and dense containers (over 4,096 docs, stored as bitmaps), many keys.
        #[test]
        fn roaring_size_is_the_built_bitmaps(
            sparse in prop::collection::btree_set(0u32..2_000_000, 0..3000),
            dense_from in 0u32..300_000,
            dense_len in 0u32..12_000,
        ) {
            let mut docs = sparse;
            docs.extend(dense_from..dense_from + dense_len);
            let docs: Vec<u32> = docs.into_iter().collect();
            let bm = RoaringBitmap::from_sorted_iter(docs.iter().copied()).unwrap();
            prop_assert_eq!(roaring_size(&docs), bm.serialized_size());
        }

        /// The densest container from a sorted slice, as the bitmap's containers count it.
        #[test]
        fn densest_container_of_a_slice(docs in prop::collection::btree_set(0u32..400_000, 0..2000)) {
            let bm: RoaringBitmap = docs.iter().copied().collect();
            let from_bitmap = match (bm.min(), bm.max()) {
                (Some(lo), Some(hi)) => ((lo >> 16)..=(hi >> 16))
                    .map(|key| bm.range_cardinality(key << 16..=(key << 16) | 0xffff))
                    .max()
                    .unwrap_or(0),
                _ => 0,
            };
            let docs: Vec<u32> = docs.into_iter().collect();
            prop_assert_eq!(densest_container(&docs), from_bitmap);
        }

        #[test]
        fn tables_round_trip(lists in prop::collection::vec(
            prop::collection::btree_set(0u32..200_000, 0..300), 0..40)
        ) {
            let bms: Vec<RoaringBitmap> =
                lists.iter().map(|l| l.iter().copied().collect()).collect();
            let raw = encode_table(&bms, TableKind::Range).unwrap();
            let (start, offsets) = parse_table(&raw, crate::FORMAT_VERSION, "t").unwrap();
            prop_assert_eq!(offsets.len(), bms.len() + 1);
            for (i, bm) in bms.iter().enumerate() {
                let e = &raw[start + offsets[i] as usize..start + offsets[i + 1] as usize];
                prop_assert_eq!(&decode_entry(e, crate::FORMAT_VERSION, 200_000).unwrap(), bm);
            }
        }

        #[test]
        fn corrupt_entries_are_errors(
            bytes in prop::collection::vec(any::<u8>(), 0..64),
            docs in prop::collection::btree_set(0u32..1000, 1..100),
            cut in any::<prop::sample::Index>(),
        ) {
            // Arbitrary bytes: an error, or docs inside the segment.
            if let Ok(bm) = decode_entry(&bytes, crate::FORMAT_VERSION, 1000) {
                prop_assert!(bm.max().is_none_or(|m| m < 1000));
            }
            let _ = parse_table(&bytes, 2, "t");
            // A valid entry cut short is an error.
            let bm: RoaringBitmap = docs.into_iter().collect();
            let mut out = Vec::new();
            entry_of(&bm, TableKind::Inverted, &mut out).unwrap();
            let short = &out[..cut.index(out.len())];
            prop_assert!(decode_entry(short, crate::FORMAT_VERSION, 1000).is_err());
        }
    }

    #[test]
    fn entries_take_their_smallest_form() {
        // A lone doc: a few bytes, never a 20-byte bitmap.
        let one: RoaringBitmap = [123_456u32].into_iter().collect();
        let mut out = Vec::new();
        entry_of(&one, TableKind::Inverted, &mut out).unwrap();
        assert_ne!(out[0], TAG_ROARING);
        assert!(out.len() <= 5, "{out:?}");
        // One doc in 64: an inverted index keeps roaring (fast to read), a range index
        // Rice-codes it, about 7 bits per doc where roaring takes 16.
        let sparse: RoaringBitmap = (0..1_000_000u32).step_by(64).collect();
        out.clear();
        entry_of(&sparse, TableKind::Inverted, &mut out).unwrap();
        assert_eq!(out[0], TAG_ROARING);
        out.clear();
        entry_of(&sparse, TableKind::Range, &mut out).unwrap();
        assert_eq!(out[0] & TAG_RICE, TAG_RICE);
        assert!(
            out.len() * 8 <= sparse.len() as usize * 7 + 64,
            "{}",
            out.len()
        );
        assert!(out.len() * 2 < sparse.serialized_size());
        let back = decode_entry(&out, crate::FORMAT_VERSION, 1_000_000).unwrap();
        assert_eq!(back, sparse);
        // One doc in 300: Rice in an inverted index too.
        let tail: RoaringBitmap = (0..1_000_000u32).step_by(300).collect();
        out.clear();
        entry_of(&tail, TableKind::Inverted, &mut out).unwrap();
        assert_eq!(out[0] & TAG_RICE, TAG_RICE);
        assert_eq!(decode_entry(&out, 4, 1_000_000).unwrap(), tail);
        // Format 3 does not know the Rice tag.
        assert!(decode_entry(&out, 3, 1_000_000).is_err());
        // Dense: roaring's bitmap containers, read by copying.
        let dense: RoaringBitmap = (0..200_000u32).step_by(3).collect();
        out.clear();
        entry_of(&dense, TableKind::Range, &mut out).unwrap();
        assert_eq!(out[0], TAG_ROARING);
    }
}
