//! Distinct-value estimates for columns without a dictionary. In: a column's non-null keys.
//! Out: a HyperLogLog estimate of how many distinct keys there are (4,096 registers, about
//! 1.6% standard error), stored in the column's statistics so the query planner can size
//! joins and aggregates (DataFusion divides join cardinalities by the keys' distinct counts).

/// Registers: 2^12.
const P: u32 = 12;
const M: usize = 1 << P;

/// A fixed, well-mixed hash of a key (SplitMix64's finaliser): the same keys always give
/// the same estimate, so segments built from the same rows are the same bytes.
pub(crate) fn mix(k: i64) -> u64 {
    let mut z = (k as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A fixed key for a byte string (8 bytes at a time, then [`estimate`]'s mix), so strings can
/// be estimated like integer keys: the same on every platform and build, unlike a seeded
/// hasher's.
pub fn bytes_key(bytes: &[u8]) -> i64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let step = |h: u64, w: u64| (h ^ w).wrapping_mul(K).rotate_left(29);
    let mut h = bytes.len() as u64;
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        h = step(h, u64::from_le_bytes(w.try_into().expect("8 bytes")));
    }
    let rest = words.remainder();
    if !rest.is_empty() {
        let mut w = [0u8; 8];
        w[..rest.len()].copy_from_slice(rest);
        h = step(h, u64::from_le_bytes(w));
    }
    h as i64
}

/// Estimated number of distinct values among `keys`.
pub fn estimate(keys: impl Iterator<Item = i64>) -> u64 {
    let mut reg = vec![0u8; M];
    let mut count = 0u64;
    for k in keys {
        count += 1;
        let h = mix(k);
        let idx = (h >> (64 - P)) as usize;
        // Rank of the first set bit in the remaining 52 bits (a sentinel bit bounds it).
        let rest = (h << P) | (1 << (P - 1));
        let rank = rest.leading_zeros() as u8 + 1;
        if rank > reg[idx] {
            reg[idx] = rank;
        }
    }
    if count == 0 {
        return 0;
    }
    let m = M as f64;
    let sum: f64 = reg.iter().map(|&r| 2f64.powi(-(r as i32))).sum();
    let raw = 0.7213 / (1.0 + 1.079 / m) * m * m / sum;
    let zeros = reg.iter().filter(|&&r| r == 0).count();
    // Small cardinalities: linear counting over the empty registers is more accurate.
    let est = if raw <= 2.5 * m && zeros > 0 {
        m * (m / zeros as f64).ln()
    } else {
        raw
    };
    // Never more distinct keys than keys (HyperLogLog can overshoot a unique column).
    (est.round() as u64).clamp(1, count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimates_are_within_a_few_percent() {
        assert_eq!(estimate(std::iter::empty()), 0);
        assert_eq!(estimate([5i64; 100].into_iter()), 1);
        for n in [10u64, 1_000, 50_000, 1_000_000] {
            // Every key four times, in a scattered order.
            let keys = (0..n as i64 * 4).map(|i| (i * 7919) % n as i64 * 1_000_003 - 42);
            let e = estimate(keys) as f64;
            let err = (e - n as f64).abs() / n as f64;
            assert!(err < 0.06, "{n} distinct estimated as {e}");
        }
        // Unique keys: at most as many as there are.
        for n in [100i64, 10_000, 1_000_000] {
            assert!(estimate(0..n) <= n as u64);
        }
    }

    #[test]
    fn byte_keys_estimate_strings_and_tell_lengths_apart() {
        for n in [1_000u64, 200_000] {
            let e = estimate((0..n * 3).map(|i| bytes_key(format!("user-{}", i % n).as_bytes())));
            let err = (e as f64 - n as f64).abs() / n as f64;
            assert!(err < 0.06, "{n} distinct strings estimated as {e}");
        }
        // Trailing zero bytes and lengths are part of the key.
        assert_ne!(bytes_key(b"a"), bytes_key(b"a\0"));
        assert_ne!(bytes_key(b""), bytes_key(b"\0\0\0\0\0\0\0\0"));
        assert_eq!(bytes_key(b"event-0001"), bytes_key(b"event-0001"));
    }
}
