//! A split-free bloom filter over column values, used to prune whole segments for `=` and `IN`
//! predicates. In: value hashes. Out: "maybe present" / "certainly absent". Serialized as
//! `num_hashes:u8 num_bits:u64le words:u64le*`.

use crate::error::{corrupt, Result};

#[derive(Debug, Clone, PartialEq)]
pub struct Bloom {
    k: u8,
    bits: Vec<u64>,
}

/// 64-bit FNV-1a followed by a murmur finalizer: stable across builds and platforms, which
/// a persisted filter requires (std's hasher is not guaranteed to be).
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

impl Bloom {
    /// A filter sized for `n` distinct values at about a 1% false-positive rate.
    pub fn with_capacity(n: usize) -> Self {
        let bits = ((n.max(1) as f64) * 9.6).ceil() as usize;
        let words = bits.div_ceil(64).max(1);
        Bloom {
            k: 7,
            bits: vec![0; words],
        }
    }

    fn positions(&self, hash: u64) -> impl Iterator<Item = usize> + '_ {
        let m = (self.bits.len() * 64) as u64;
        let h1 = hash;
        let h2 = hash.rotate_left(32) | 1;
        (0..self.k as u64).map(move |i| (h1.wrapping_add(i.wrapping_mul(h2)) % m) as usize)
    }

    pub fn insert(&mut self, hash: u64) {
        let pos: Vec<usize> = self.positions(hash).collect();
        for p in pos {
            self.bits[p / 64] |= 1 << (p % 64);
        }
    }

    pub fn may_contain(&self, hash: u64) -> bool {
        self.positions(hash)
            .all(|p| self.bits[p / 64] & (1 << (p % 64)) != 0)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(9 + self.bits.len() * 8);
        out.push(self.k);
        out.extend_from_slice(&(self.bits.len() as u64 * 64).to_le_bytes());
        for w in &self.bits {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        if bytes.len() < 9 {
            return Err(corrupt("bloom filter shorter than its header"));
        }
        let k = bytes[0];
        let nbits = u64::from_le_bytes(bytes[1..9].try_into().expect("8 bytes"));
        let body = &bytes[9..];
        if k == 0 || k > 32 || nbits == 0 || nbits % 64 != 0 || nbits / 8 != body.len() as u64 {
            return Err(corrupt(format!(
                "bloom filter header (k={k}, bits={nbits}) does not match its {} body bytes",
                body.len()
            )));
        }
        let bits = body
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        Ok(Bloom { k, bits })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_false_negatives_and_few_false_positives() {
        let mut b = Bloom::with_capacity(10_000);
        for i in 0..10_000u64 {
            b.insert(hash_bytes(&i.to_le_bytes()));
        }
        let b = Bloom::from_bytes(&b.to_bytes()).unwrap();
        for i in 0..10_000u64 {
            assert!(b.may_contain(hash_bytes(&i.to_le_bytes())));
        }
        let fp = (10_000..110_000u64)
            .filter(|i| b.may_contain(hash_bytes(&i.to_le_bytes())))
            .count();
        assert!(fp < 3_000, "false positive rate too high: {fp}/100000");
    }

    #[test]
    fn bad_bytes_are_errors() {
        assert!(Bloom::from_bytes(&[]).is_err());
        assert!(Bloom::from_bytes(&[7, 64, 0, 0, 0, 0, 0, 0, 0, 1]).is_err());
    }
}
