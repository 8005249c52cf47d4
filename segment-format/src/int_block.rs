//! Integer blocks of format 6 (`Encoding::Packed`: INT, LONG and TIMESTAMP columns without a
//! dictionary). In: one block's `i64` values (null rows already hold a neighbour's value; the
//! null bitmap says which they are). Out: `mode:u8 base:i64 width:u8 packed`, and back — every
//! value, or only picked rows without unpacking the others.
//!
//! Two modes; the builder stores whichever is smaller after compression, per block:
//! - frame of reference (`FOR`, 0): `value[i] = base + packed[i]`; one value reads in O(1).
//! - zigzag delta (`DELTA`, 1): `value[0] = base`, `value[i] = value[i-1] + unzigzag(packed[i-1])`
//!   (`rows - 1` packed values); reading row k sums the first k deltas. A time column that
//!   increases with a few seconds of jitter packs into ~14 bits per row instead of 64.
//!
//! All arithmetic wraps, so every `i64` sequence round-trips.

use crate::bitpack;
use crate::error::{corrupt, Result};

const FOR: u8 = 0;
const DELTA: u8 = 1;
/// mode + base + width.
const HEADER: usize = 1 + 8 + 1;

fn zigzag(d: i64) -> u64 {
    ((d << 1) ^ (d >> 63)) as u64
}

fn unzigzag(z: u64) -> i64 {
    ((z >> 1) as i64) ^ -((z & 1) as i64)
}

fn width_of(max: u64) -> u8 {
    (u64::BITS - max.leading_zeros()) as u8
}

/// One block of values in both modes, frame of reference first: the builder stores whichever
/// is smaller after compression.
pub fn encode_both(values: &[i64]) -> [Vec<u8>; 2] {
    let min = values.iter().copied().min().unwrap_or(0);
    let max = values.iter().copied().max().unwrap_or(0);
    let for_width = width_of(max.wrapping_sub(min) as u64);
    let offsets: Vec<u64> = values.iter().map(|v| v.wrapping_sub(min) as u64).collect();
    let mut frame = header(FOR, min, for_width);
    frame.extend(bitpack::pack64(&offsets, for_width));
    let deltas: Vec<u64> = values
        .windows(2)
        .map(|w| zigzag(w[1].wrapping_sub(w[0])))
        .collect();
    let delta_width = width_of(deltas.iter().copied().max().unwrap_or(0));
    let mut delta = header(DELTA, values.first().copied().unwrap_or(0), delta_width);
    delta.extend(bitpack::pack64(&deltas, delta_width));
    [frame, delta]
}

fn header(mode: u8, base: i64, width: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER);
    out.push(mode);
    out.extend_from_slice(&base.to_le_bytes());
    out.push(width);
    out
}

/// A parsed block: its mode, base, width and packed values, checked against `rows`.
struct Parsed<'a> {
    mode: u8,
    base: i64,
    width: u8,
    packed: &'a [u8],
}

fn parse<'a>(raw: &'a [u8], rows: usize, what: &str) -> Result<Parsed<'a>> {
    if raw.len() < HEADER {
        return Err(corrupt(format!(
            "{what}: integer block shorter than its header"
        )));
    }
    let mode = raw[0];
    let base = i64::from_le_bytes(raw[1..9].try_into().expect("8 bytes"));
    let width = raw[9];
    let packed = &raw[HEADER..];
    let n = match mode {
        FOR => rows,
        DELTA => rows.saturating_sub(1),
        other => {
            return Err(corrupt(format!(
                "{what}: unknown integer block mode {other}"
            )))
        }
    };
    bitpack::check(packed, n, width).map_err(|e| corrupt(format!("{what}: {e}")))?;
    if packed.len() != bitpack::packed_len(n, width) {
        return Err(corrupt(format!(
            "{what}: integer block holds {} packed bytes for {rows} rows of {width} bits",
            packed.len()
        )));
    }
    Ok(Parsed {
        mode,
        base,
        width,
        packed,
    })
}

/// Every value of a block of `rows` rows.
pub fn decode(raw: &[u8], rows: usize, what: &str) -> Result<Vec<i64>> {
    let p = parse(raw, rows, what)?;
    let mut out = Vec::with_capacity(rows);
    if p.mode == FOR {
        bitpack::unpack_with(p.packed, rows, p.width, |u| {
            out.push(p.base.wrapping_add(u as i64))
        })?;
    } else if rows > 0 {
        let mut v = p.base;
        out.push(v);
        bitpack::unpack_with(p.packed, rows - 1, p.width, |z| {
            v = v.wrapping_add(unzigzag(z));
            out.push(v);
        })?;
    }
    Ok(out)
}

/// The values of rows `picked` (ascending, each below `rows`) of a block, appended to `out`.
pub fn decode_picked(
    raw: &[u8],
    rows: usize,
    picked: &[usize],
    out: &mut Vec<i64>,
    what: &str,
) -> Result<()> {
    let p = parse(raw, rows, what)?;
    let Some(&last) = picked.last() else {
        return Ok(());
    };
    if last >= rows {
        return Err(corrupt(format!(
            "{what}: row {last} is past the block's {rows}"
        )));
    }
    if p.mode == FOR {
        out.extend(picked.iter().map(|&k| {
            p.base
                .wrapping_add(bitpack::get(p.packed, p.width, k) as i64)
        }));
        return Ok(());
    }
    // Delta: sum the deltas up to the last picked row, emitting the picked ones on the way.
    let mut next = picked.iter().peekable();
    let mut v = p.base;
    while next.next_if(|&&k| k == 0).is_some() {
        out.push(v);
    }
    let mut row = 0usize;
    bitpack::unpack_with(p.packed, last, p.width, |z| {
        row += 1;
        v = v.wrapping_add(unzigzag(z));
        while next.next_if(|&&k| k == row).is_some() {
            out.push(v);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn values() -> impl Strategy<Value = Vec<i64>> {
        prop_oneof![
            proptest::collection::vec(any::<i64>(), 0..300),
            // Increasing timestamps with jitter (delta mode).
            (
                any::<i64>(),
                proptest::collection::vec(-3000i64..6000, 0..300)
            )
                .prop_map(|(start, steps)| {
                    let mut v = start / 2;
                    steps
                        .iter()
                        .map(|s| {
                            v = v.wrapping_add(*s);
                            v
                        })
                        .collect()
                }),
            // A narrow range (frame of reference).
            (any::<i64>(), proptest::collection::vec(0i64..1000, 0..300))
                .prop_map(|(b, o)| o.iter().map(|x| b.wrapping_add(*x)).collect()),
        ]
    }

    proptest! {
        #[test]
        fn round_trip(v in values(), pick in proptest::collection::vec(any::<prop::sample::Index>(), 0..20)) {
            for raw in encode_both(&v) {
            prop_assert_eq!(decode(&raw, v.len(), "t").unwrap(), v.clone());
            if !v.is_empty() {
                let mut rows: Vec<usize> = pick.iter().map(|i| i.index(v.len())).collect();
                rows.sort_unstable();
                let mut got = Vec::new();
                decode_picked(&raw, v.len(), &rows, &mut got, "t").unwrap();
                let want: Vec<i64> = rows.iter().map(|&k| v[k]).collect();
                prop_assert_eq!(got, want);
            }
            }
        }

        #[test]
        fn corrupt_blocks_are_errors(
            bytes in proptest::collection::vec(any::<u8>(), 0..120),
            rows in 0usize..40,
            values in proptest::collection::vec(any::<i64>(), 1..40),
            cut in any::<proptest::sample::Index>(),
        ) {
            // Arbitrary bytes: an error, or exactly the rows asked for.
            if let Ok(v) = decode(&bytes, rows, "t") {
                prop_assert_eq!(v.len(), rows);
            }
            let picked: Vec<usize> = (0..rows).step_by(3).collect();
            let mut got = Vec::new();
            if decode_picked(&bytes, rows, &picked, &mut got, "t").is_ok() {
                prop_assert_eq!(got.len(), picked.len());
            }
            // A valid block cut short is an error in both modes.
            for raw in encode_both(&values) {
                let n = cut.index(raw.len());
                prop_assert!(decode(&raw[..n], values.len(), "t").is_err());
            }
        }
    }

    #[test]
    fn time_column_takes_delta_mode() {
        let ts: Vec<i64> = (0..8192)
            .map(|i| 1_795_860_000_000 + i * 7 + (i * 7919 % 3001) - 1500)
            .collect();
        let [frame, delta] = encode_both(&ts);
        assert_eq!(delta[0], DELTA);
        assert!(delta.len() < 8192 * 2, "{} bytes", delta.len());
        assert!(delta.len() < frame.len());
        assert_eq!(decode(&delta, ts.len(), "t").unwrap(), ts);
    }

    #[test]
    fn wrong_lengths_are_errors() {
        let [raw, _] = encode_both(&[1, 2, 3]);
        assert!(decode(&raw, 40, "t").is_err());
        assert!(decode(&raw[..raw.len() - 1], 3, "t").is_err());
        assert!(decode_picked(&raw, 3, &[3], &mut Vec::new(), "t").is_err());
    }
}
