//! Fixed-width bit packing of dictionary ids (`u32`, widths 0..=32) and of integer offsets
//! (`u64`, widths 0..=64). In: values and a bit width. Out: a little-endian byte string of
//! `ceil(n * width / 8)` bytes (rounded up to whole u64 words), and back, whole or one value at
//! a time. Width 0 means every value is 0 (a one-value dictionary) and takes no bytes.

use crate::error::{corrupt, Result};

/// Bits needed to represent every id below `cardinality`.
pub fn width_for(cardinality: usize) -> u8 {
    if cardinality <= 1 {
        0
    } else {
        (usize::BITS - (cardinality - 1).leading_zeros()) as u8
    }
}

/// Bytes `pack` produces for `n` values of `width` bits.
pub fn packed_len(n: usize, width: u8) -> usize {
    (n * width as usize).div_ceil(64) * 8
}

/// Packs `ids` into `width` bits each. Ids must fit in `width` bits.
pub fn pack(ids: &[u32], width: u8) -> Vec<u8> {
    pack_iter(ids.len(), width, ids.iter().map(|&v| v as u64))
}

/// Packs `values` into `width` (0..=64) bits each. Values must fit in `width` bits.
pub fn pack64(values: &[u64], width: u8) -> Vec<u8> {
    pack_iter(values.len(), width, values.iter().copied())
}

fn pack_iter(n: usize, width: u8, values: impl Iterator<Item = u64>) -> Vec<u8> {
    let mut out = vec![0u8; packed_len(n, width)];
    if width == 0 {
        return out;
    }
    let w = width as usize;
    let mut words = vec![0u64; out.len() / 8];
    for (i, v) in values.enumerate() {
        let bit = i * w;
        let word = bit / 64;
        let off = bit % 64;
        words[word] |= v << off;
        if off + w > 64 {
            words[word + 1] |= v >> (64 - off);
        }
    }
    for (chunk, w) in out.chunks_exact_mut(8).zip(words) {
        chunk.copy_from_slice(&w.to_le_bytes());
    }
    out
}

/// Unpacks `n` ids of `width` bits, appending them to `out`. Fails on short input.
pub fn unpack_into(bytes: &[u8], n: usize, width: u8, out: &mut Vec<u32>) -> Result<()> {
    if width > 32 {
        return Err(corrupt(format!("bit width {width} is over 32")));
    }
    check(bytes, n, width)?;
    let start = out.len();
    out.resize(start + n, 0);
    unpack_u32(&bytes[..packed_len(n, width)], width, &mut out[start..]);
    Ok(())
}

/// Fills `out` with the first `out.len()` values of `width` (0..=32) bits of `bytes`, which
/// the caller has [`check`]ed holds them. One code path per width, so that every shift and
/// load offset is a constant.
fn unpack_u32(bytes: &[u8], width: u8, out: &mut [u32]) {
    macro_rules! by_width {
        ($($w:literal)*) => {
            match width {
                0 => out.fill(0),
                $($w => unpack_fixed::<$w>(bytes, out),)*
                _ => unreachable!("width checked to be at most 32"),
            }
        };
    }
    by_width!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30
        31 32)
}

/// [`unpack_u32`] for `W` bits. The bytes are one little-endian bit string, so value `i` is
/// the `W` bits from bit `i * W % 8` of the eight bytes from byte `i * W / 8`: one unaligned
/// load, a shift and a mask. Eight values take exactly `W` bytes, so a group of eight loads
/// at constant offsets from the group's first byte.
fn unpack_fixed<const W: usize>(bytes: &[u8], out: &mut [u32]) {
    let mask = if W == 32 {
        u32::MAX as u64
    } else {
        (1u64 << W) - 1
    };
    // The group's last value starts at byte 7 * W / 8 and its load takes 8 bytes.
    let span = 7 * W / 8 + 8;
    let groups = if bytes.len() >= span {
        ((bytes.len() - span) / W + 1).min(out.len() / 8)
    } else {
        0
    };
    for (g, dst) in out.chunks_exact_mut(8).take(groups).enumerate() {
        let src = &bytes[g * W..g * W + span];
        for (j, d) in dst.iter_mut().enumerate() {
            let bit = j * W;
            let at = bit / 8;
            let v = u64::from_le_bytes(src[at..at + 8].try_into().expect("8 bytes"));
            *d = ((v >> (bit % 8)) & mask) as u32;
        }
    }
    // The last values, whose eight-byte load would run past the end.
    for (i, d) in out.iter_mut().enumerate().skip(groups * 8) {
        *d = get(bytes, W as u8, i) as u32;
    }
}

/// Calls `f` with each of `n` values of `width` (0..=64) bits, in order. Fails on short
/// input or a width over 64.
pub fn unpack_with(bytes: &[u8], n: usize, width: u8, mut f: impl FnMut(u64)) -> Result<()> {
    check(bytes, n, width)?;
    if width == 0 {
        (0..n).for_each(|_| f(0));
        return Ok(());
    }
    let words: Vec<u64> = bytes[..packed_len(n, width)]
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("chunks_exact(8)")))
        .collect();
    let w = width as usize;
    let mask: u64 = if w == 64 { u64::MAX } else { (1u64 << w) - 1 };
    for i in 0..n {
        let bit = i * w;
        let word = bit / 64;
        let off = bit % 64;
        let mut v = words[word] >> off;
        if off + w > 64 {
            v |= words[word + 1] << (64 - off);
        }
        f(v & mask);
    }
    Ok(())
}

/// Fails unless `bytes` holds `n` values of `width` (0..=64) bits.
pub fn check(bytes: &[u8], n: usize, width: u8) -> Result<()> {
    if width > 64 {
        return Err(corrupt(format!("bit width {width} is over 64")));
    }
    let need = packed_len(n, width);
    if bytes.len() < need {
        return Err(corrupt(format!(
            "bit-packed block holds {} bytes, {} ids of {} bits need {}",
            bytes.len(),
            n,
            width,
            need
        )));
    }
    Ok(())
}

/// Value `i` of a packed run of `width` bits, without unpacking the others. The caller has
/// [`check`]ed that the run holds more than `i` values.
pub fn get(bytes: &[u8], width: u8, i: usize) -> u64 {
    if width == 0 {
        return 0;
    }
    let w = width as usize;
    let bit = i * w;
    let word = |k: usize| u64::from_le_bytes(bytes[k * 8..k * 8 + 8].try_into().expect("8 bytes"));
    let off = bit % 64;
    let mut v = word(bit / 64) >> off;
    if off + w > 64 {
        v |= word(bit / 64 + 1) << (64 - off);
    }
    if w == 64 {
        v
    } else {
        v & ((1u64 << w) - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn widths() {
        assert_eq!(width_for(0), 0);
        assert_eq!(width_for(1), 0);
        assert_eq!(width_for(2), 1);
        assert_eq!(width_for(3), 2);
        assert_eq!(width_for(256), 8);
        assert_eq!(width_for(257), 9);
    }

    proptest! {
        #[test]
        fn round_trip(width in 0u8..=32, raw in proptest::collection::vec(any::<u32>(), 0..2000)) {
            let mask = if width == 32 { u32::MAX } else if width == 0 { 0 } else { (1u32 << width) - 1 };
            let ids: Vec<u32> = raw.iter().map(|v| v & mask).collect();
            let packed = pack(&ids, width);
            let mut back = Vec::new();
            unpack_into(&packed, ids.len(), width, &mut back).unwrap();
            prop_assert_eq!(&back, &ids);
            // Appended after what `out` holds; trailing bytes past the values are ignored.
            let mut more = vec![7u32; 3];
            let mut longer = packed.clone();
            longer.extend_from_slice(&[0xFF; 16]);
            unpack_into(&longer, ids.len(), width, &mut more).unwrap();
            prop_assert_eq!(&more[..3], &[7, 7, 7]);
            prop_assert_eq!(&more[3..], &ids[..]);
            // Any prefix of the values, as a block's first rows.
            let cut = ids.len() / 3;
            let mut prefix = Vec::new();
            unpack_into(&packed, cut, width, &mut prefix).unwrap();
            prop_assert_eq!(&prefix, &ids[..cut]);
            for (i, &id) in ids.iter().enumerate() {
                prop_assert_eq!(get(&packed, width, i), id as u64);
            }
        }

        #[test]
        fn round_trip_64(width in 0u8..=64, raw in proptest::collection::vec(any::<u64>(), 0..700)) {
            let mask = match width { 0 => 0, 64 => u64::MAX, w => (1u64 << w) - 1 };
            let values: Vec<u64> = raw.iter().map(|v| v & mask).collect();
            let packed = pack64(&values, width);
            prop_assert_eq!(packed.len(), packed_len(values.len(), width));
            let mut back = Vec::new();
            unpack_with(&packed, values.len(), width, |v| back.push(v)).unwrap();
            prop_assert_eq!(&back, &values);
            for (i, &v) in values.iter().enumerate() {
                prop_assert_eq!(get(&packed, width, i), v);
            }
        }

        #[test]
        fn short_input_is_an_error(width in 1u8..=32, n in 1usize..500) {
            let packed = pack(&vec![0; n], width);
            let mut back = Vec::new();
            prop_assert!(unpack_into(&packed[..packed.len() - 1], n, width, &mut back).is_err());
        }
    }
}
