//! Rice-coded doc-id lists (format 4 posting entries). In: an ascending doc-id set and a
//! parameter `k`. Out: a byte string, and back to a [`RoaringBitmap`].
//!
//! Each doc is coded by its gap `g` from the previous doc plus one (the first doc's gap is the
//! doc itself), split at bit `k`: the low `k` bits of every gap are bit-packed, and the
//! quotients `g >> k` follow in unary (`q` zero bits, then a one bit).
//!
//! ```text
//! rice := n:varint low:bits(n * k) pad0 unary pad0     ; bits least significant first
//! ```
//!
//! With `k` near `log2` of the mean gap a doc costs about `k + 1.6` bits — close to the
//! entropy of a random set of that density. Keeping the two parts apart lets the reader walk
//! the one bits of the unary part a word at a time (doc `i` is `i + ((p_i - i) << k) +
//! low_0 + … + low_i`, `p_i` the position of the `i`-th one bit) instead of decoding codes
//! one after another.

use roaring::RoaringBitmap;

use crate::error::{corrupt, Result};
use crate::postings::{get_varint, put_varint};

/// Gaps of ascending `docs` (first doc, then each doc minus the previous doc minus one).
fn gaps(docs: impl IntoIterator<Item = u32>) -> impl Iterator<Item = u64> {
    let mut next = 0u64;
    docs.into_iter().map(move |d| {
        let g = d as u64 - next;
        next = d as u64 + 1;
        g
    })
}

fn varint_len(v: u64) -> usize {
    (64 - v.max(1).leading_zeros() as usize).div_ceil(7)
}

/// The best parameter for ascending `docs` (a bitmap or a sorted slice) among those near
/// `log2` of its mean gap, and the bytes its encoding takes.
pub fn choose<D: IntoIterator<Item = u32> + Clone>(docs: D) -> (u8, usize) {
    let (n, total) = gaps(docs.clone()).fold((0u64, 0u64), |(n, total), g| (n + 1, total + g));
    if n == 0 {
        return (0, 1);
    }
    let mean = total / n;
    let k0 = if mean == 0 {
        0
    } else {
        63 - mean.leading_zeros()
    };
    let candidates: Vec<u32> = (k0.saturating_sub(1)..=(k0 + 1).min(31)).collect();
    let mut quotients = vec![0u64; candidates.len()];
    for g in gaps(docs) {
        for (q, &k) in quotients.iter_mut().zip(&candidates) {
            *q += g >> k;
        }
    }
    candidates
        .iter()
        .zip(quotients)
        .map(|(&k, q)| {
            let len =
                varint_len(n) + (n * k as u64).div_ceil(8) as usize + (q + n).div_ceil(8) as usize;
            (k as u8, len)
        })
        .min_by_key(|&(_, len)| len)
        .expect("at least one candidate")
}

/// Sets bits `[pos, pos + n)` of `words` to `v` (`n <= 32`; the bits are still zero).
fn put_bits(words: &mut Vec<u64>, pos: usize, v: u64, n: u32) {
    let (w, off) = (pos / 64, (pos % 64) as u32);
    if words.len() < w + 2 {
        words.resize(w + 2, 0);
    }
    words[w] |= v << off;
    if off + n > 64 {
        words[w + 1] |= v >> (64 - off);
    }
}

fn append_bits(out: &mut Vec<u8>, words: &[u64], bits: usize) {
    out.extend(
        words
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .take(bits.div_ceil(8)),
    );
}

/// Appends ascending `docs` Rice-coded with parameter `k` (as sized by [`choose`]).
pub fn encode<D: IntoIterator<Item = u32> + Clone>(docs: D, k: u8, out: &mut Vec<u8>) {
    let k = k as u32;
    put_varint(out, docs.clone().into_iter().count() as u32);
    let mut low = Vec::new();
    let mut unary = Vec::new();
    let (mut low_pos, mut unary_pos) = (0usize, 0usize);
    for g in gaps(docs) {
        if k > 0 {
            put_bits(&mut low, low_pos, g & ((1u64 << k) - 1), k);
            low_pos += k as usize;
        }
        unary_pos += (g >> k) as usize; // the zero bits of the quotient
        put_bits(&mut unary, unary_pos, 1, 1);
        unary_pos += 1;
    }
    append_bits(out, &low, low_pos);
    append_bits(out, &unary, unary_pos);
}

/// The `k` bits of value `i` in a packed run of `k`-bit values.
#[inline]
fn low_bits(bytes: &[u8], i: usize, k: u32, mask: u64) -> u64 {
    let bit = i * k as usize;
    let (at, shift) = (bit / 8, bit % 8);
    let w = match bytes.get(at..at + 8) {
        Some(chunk) => u64::from_le_bytes(chunk.try_into().expect("8 bytes")),
        None => {
            let rest = bytes.get(at..).unwrap_or_default();
            let mut buf = [0u8; 8];
            buf[..rest.len()].copy_from_slice(rest);
            u64::from_le_bytes(buf)
        }
    };
    (w >> shift) & mask
}

/// Decodes an encoding, calling `emit` with each doc in ascending order; every doc must be
/// below `rows`.
pub fn decode(bytes: &[u8], k: u8, rows: u64, mut emit: impl FnMut(u32)) -> Result<()> {
    if k > 31 {
        return Err(corrupt(format!("Rice parameter {k} is over 31")));
    }
    let k = k as u32;
    let mask = (1u64 << k) - 1;
    let mut pos = 0;
    let n = get_varint(bytes, &mut pos)? as usize;
    let low_len = (n * k as usize).div_ceil(8);
    let rest = &bytes[pos..];
    if low_len > rest.len() || n as u64 > rows {
        return Err(corrupt("Rice-coded list is shorter than its count"));
    }
    let (low, unary) = rest.split_at(low_len);
    let (mut i, mut low_sum) = (0usize, 0u64);
    let max_high = rows >> k;
    for (wi, chunk) in unary.chunks(8).enumerate() {
        let mut buf = [0u8; 8];
        buf[..chunk.len()].copy_from_slice(chunk);
        let mut w = u64::from_le_bytes(buf);
        while w != 0 {
            if i == n {
                return Err(corrupt("Rice-coded list holds more docs than its count"));
            }
            let p = wi * 64 + w.trailing_zeros() as usize;
            w &= w - 1;
            let high = (p - i) as u64;
            if high > max_high {
                return Err(corrupt("posting entry names a doc past the end"));
            }
            low_sum += low_bits(low, i, k, mask);
            let doc = i as u64 + (high << k) + low_sum;
            if doc >= rows {
                return Err(corrupt("posting entry names a doc past the end"));
            }
            emit(doc as u32);
            i += 1;
        }
    }
    // Exactly `n` docs, and nothing after the last one bit but its byte's padding.
    let last_byte_used = unary.last().is_none_or(|&b| b != 0);
    if i != n || !last_byte_used {
        return Err(corrupt("Rice-coded list does not match its count"));
    }
    Ok(())
}

/// Decodes an encoding into a bitmap. The docs are collected per 65,536-doc container and
/// handed to roaring as its portable serialization (array containers, copied in bulk), which
/// is several times faster than inserting them one by one; a container of over 4,096 docs
/// (which the writer never Rice-codes) goes through a bitset instead.
pub fn decode_bitmap(bytes: &[u8], k: u8, rows: u64) -> Result<RoaringBitmap> {
    let mut pos = 0;
    let n = get_varint(bytes, &mut pos)? as usize;
    let mut docs: Vec<u32> = Vec::with_capacity(n.min(rows as usize));
    decode(bytes, k, rows, |d| docs.push(d))?;
    // The containers' u16 arrays, back to back (little-endian), and (key, docs) of each.
    let mut body: Vec<u8> = Vec::with_capacity(2 * docs.len());
    let mut containers: Vec<(u16, u32)> = Vec::new();
    for run in docs.chunk_by(|a, b| a >> 16 == b >> 16) {
        containers.push(((run[0] >> 16) as u16, run.len() as u32));
        body.extend(run.iter().flat_map(|&d| (d as u16).to_le_bytes()));
    }
    if containers.iter().any(|&(_, c)| c > 4096) {
        let mut bits = vec![0u8; rows.div_ceil(8) as usize];
        let mut lows = body.chunks_exact(2);
        for &(key, c) in &containers {
            for l in lows.by_ref().take(c as usize) {
                let d = ((key as usize) << 16) | u16::from_le_bytes([l[0], l[1]]) as usize;
                bits[d / 8] |= 1 << (d % 8);
            }
        }
        return Ok(RoaringBitmap::from_lsb0_bytes(0, &bits));
    }
    // Portable format without run containers: cookie, count, (key, card - 1) per container,
    // each container's byte offset, then the containers' u16 arrays.
    const COOKIE_NO_RUNS: u32 = 12346;
    let header_len = 8 + containers.len() * 8;
    let mut header = Vec::with_capacity(header_len);
    header.extend_from_slice(&COOKIE_NO_RUNS.to_le_bytes());
    header.extend_from_slice(&(containers.len() as u32).to_le_bytes());
    for &(key, c) in &containers {
        header.extend_from_slice(&key.to_le_bytes());
        header.extend_from_slice(&((c - 1) as u16).to_le_bytes());
    }
    let mut offset = header_len as u32;
    for &(_, c) in &containers {
        header.extend_from_slice(&offset.to_le_bytes());
        offset += c * 2;
    }
    RoaringBitmap::deserialize_from(std::io::Read::chain(&header[..], &body[..]))
        .map_err(|e| corrupt(format!("posting list: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(bm: &RoaringBitmap, rows: u64) -> RoaringBitmap {
        let (k, len) = choose(bm);
        let mut out = Vec::new();
        encode(bm, k, &mut out);
        assert_eq!(out.len(), len);
        decode_bitmap(&out, k, rows).unwrap()
    }

    proptest! {
        #[test]
        fn lists_round_trip(docs in prop::collection::btree_set(0u32..3_000_000, 0..2000)) {
            let bm: RoaringBitmap = docs.iter().copied().collect();
            prop_assert_eq!(round_trip(&bm, 3_000_000), bm);
        }

        #[test]
        fn dense_lists_round_trip(start in 0u32..1000, step in 1u32..5, n in 0u32..100_000) {
            let bm: RoaringBitmap = (0..n).map(|i| start + i * step).collect();
            prop_assert_eq!(round_trip(&bm, 600_000), bm);
        }

        #[test]
        fn every_parameter_round_trips(
            docs in prop::collection::btree_set(0u32..1 << 22, 1..50), k in 0u8..=31
        ) {
            let bm: RoaringBitmap = docs.iter().copied().collect();
            let mut out = Vec::new();
            encode(&bm, k, &mut out);
            prop_assert_eq!(decode_bitmap(&out, k, 1 << 22).unwrap(), bm);
        }

        #[test]
        fn corrupt_streams_are_errors(bytes in prop::collection::vec(any::<u8>(), 0..64), k in 0u8..40) {
            if let Ok(bm) = decode_bitmap(&bytes, k, 5000) {
                prop_assert!(bm.max().is_none_or(|m| m < 5000));
            }
        }
    }

    #[test]
    fn sizes_near_the_entropy() {
        // One doc in 64, spread evenly: 6 bits of remainder plus a short quotient.
        let bm: RoaringBitmap = (0..1_000_000u32).step_by(64).collect();
        let (k, len) = choose(&bm);
        assert_eq!(k, 5);
        assert!(
            len <= (bm.len() as usize * 7).div_ceil(8) + 3,
            "{len} bytes"
        );
        // A lone doc: k near its value's width, a handful of bytes.
        let one: RoaringBitmap = [999_999u32].into_iter().collect();
        assert!(choose(&one).1 <= 5);
        assert_eq!(round_trip(&one, 1_000_000), one);
        assert_eq!(round_trip(&RoaringBitmap::new(), 10), RoaringBitmap::new());
    }

    #[test]
    fn truncation_and_long_padding_are_errors() {
        let bm: RoaringBitmap = (0..5000u32).step_by(7).collect();
        let (k, _) = choose(&bm);
        let mut out = Vec::new();
        encode(&bm, k, &mut out);
        // Cut short: an error, or (cut between codes) a prefix; the table's offsets and
        // checksum are what catch the latter.
        for cut in 0..out.len() {
            if let Ok(b) = decode_bitmap(&out[..cut], k, 5000) {
                assert!(b.len() < bm.len() && b.is_subset(&bm));
            }
        }
        out.extend_from_slice(&[0, 0]);
        assert!(decode_bitmap(&out, k, 5000).is_err());
        assert!(decode_bitmap(&[0x01], 0, 0).is_err());
    }
}
