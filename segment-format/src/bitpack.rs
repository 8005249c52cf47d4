//! Fixed-width bit packing of dictionary ids. In: `u32` ids and a bit width (0..=32). Out: a
//! little-endian byte string of `ceil(n * width / 8)` bytes (rounded up to whole u64 words), and
//! back. Width 0 means every id is 0 (a one-value dictionary) and takes no bytes.

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
    let mut out = vec![0u8; packed_len(ids.len(), width)];
    if width == 0 {
        return out;
    }
    let w = width as usize;
    let mut words = vec![0u64; out.len() / 8];
    for (i, &id) in ids.iter().enumerate() {
        let bit = i * w;
        let word = bit / 64;
        let off = bit % 64;
        let v = id as u64;
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
    if width == 0 {
        out.resize(out.len() + n, 0);
        return Ok(());
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
    let words: Vec<u64> = bytes[..need]
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("chunks_exact(8)")))
        .collect();
    let w = width as usize;
    let mask: u64 = if w == 64 { u64::MAX } else { (1u64 << w) - 1 };
    out.reserve(n);
    for i in 0..n {
        let bit = i * w;
        let word = bit / 64;
        let off = bit % 64;
        let mut v = words[word] >> off;
        if off + w > 64 {
            v |= words[word + 1] << (64 - off);
        }
        out.push((v & mask) as u32);
    }
    Ok(())
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
            prop_assert_eq!(back, ids);
        }

        #[test]
        fn short_input_is_an_error(width in 1u8..=32, n in 1usize..500) {
            let packed = pack(&vec![0; n], width);
            let mut back = Vec::new();
            prop_assert!(unpack_into(&packed[..packed.len() - 1], n, width, &mut back).is_err());
        }
    }
}
