//! Exact decimal text for DECIMAL(p, s) columns. In: text as it arrives in NDJSON, CSV or a
//! query (`-12.345`, `1.5e3`, `.5`). Out: the unscaled integer at the column's scale, rounded
//! half away from zero as PostgreSQL rounds on insert, or an error naming what is wrong.

use crate::types::MAX_DECIMAL_PRECISION;

/// Parses `text` as a `DECIMAL(precision, scale)` value: the value times 10^scale.
pub fn parse_decimal(text: &str, precision: u8, scale: u8) -> Result<i64, String> {
    let bad = || format!("{text:?} is not a decimal number");
    let t = text.trim();
    let (negative, t) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let (mantissa, exp) = match t.find(['e', 'E']) {
        Some(i) => {
            let e: i32 = t[i + 1..].parse().map_err(|_| bad())?;
            (&t[..i], e)
        }
        None => (t, 0),
    };
    let (int_part, frac_part) = match mantissa.split_once('.') {
        Some((i, f)) => (i, f),
        None => (mantissa, ""),
    };
    if int_part.is_empty() && frac_part.is_empty()
        || !int_part.bytes().all(|b| b.is_ascii_digit())
        || !frac_part.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    // The digits, without leading zeros, and where the point sits: value = digits * 10^-point.
    let digits: Vec<u8> = int_part
        .bytes()
        .chain(frac_part.bytes())
        .map(|b| b - b'0')
        .skip_while(|&d| d == 0)
        .collect();
    if digits.is_empty() {
        return Ok(0);
    }
    let point = frac_part.len() as i64 - exp as i64;
    // Keep digits down to 10^-scale; the first dropped digit decides the rounding.
    let keep = digits.len() as i64 - (point - scale as i64);
    let overflow = || {
        format!(
            "{text:?} does not fit DECIMAL({precision}, {scale}): at most {} digits before the point",
            precision - scale
        )
    };
    let mut unscaled: i128 = 0;
    let kept = keep.clamp(0, digits.len() as i64) as usize;
    for &d in &digits[..kept] {
        unscaled = unscaled * 10 + d as i128;
        if unscaled >= 10i128.pow(precision as u32) {
            return Err(overflow());
        }
    }
    if keep > digits.len() as i64 {
        // Trailing zeros to reach the scale.
        for _ in 0..keep - digits.len() as i64 {
            unscaled *= 10;
            if unscaled >= 10i128.pow(precision as u32) {
                return Err(overflow());
            }
        }
    } else if keep >= 0 && digits.get(kept).is_some_and(|&d| d >= 5) {
        unscaled += 1;
    }
    if unscaled >= 10i128.pow(precision as u32) {
        return Err(overflow());
    }
    debug_assert!(precision <= MAX_DECIMAL_PRECISION);
    let v = unscaled as i64;
    Ok(if negative { -v } else { v })
}

/// The text of an unscaled value at `scale` (`12345`, 2 → `123.45`).
pub fn format_decimal(unscaled: i128, scale: u8) -> String {
    let digits = unscaled.unsigned_abs().to_string();
    let sign = if unscaled < 0 { "-" } else { "" };
    if scale == 0 {
        return format!("{sign}{digits}");
    }
    let s = scale as usize;
    let padded = format!("{digits:0>width$}", width = s + 1);
    let (i, f) = padded.split_at(padded.len() - s);
    format!("{sign}{i}.{f}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_and_rounds_like_postgresql() {
        let p = |t: &str| parse_decimal(t, 9, 2);
        assert_eq!(p("123.45"), Ok(12345));
        assert_eq!(p("-123.45"), Ok(-12345));
        assert_eq!(p("+1"), Ok(100));
        assert_eq!(p(".5"), Ok(50));
        assert_eq!(p("5."), Ok(500));
        assert_eq!(p("1.005"), Ok(101));
        assert_eq!(p("1.004999"), Ok(100));
        assert_eq!(p("-1.005"), Ok(-101));
        assert_eq!(p("1.5e3"), Ok(150000));
        assert_eq!(p("15E-3"), Ok(2));
        assert_eq!(p("0.0000001"), Ok(0));
        assert_eq!(p("0009999999.99"), Ok(999999999));
        assert!(p("10000000")
            .unwrap_err()
            .contains("does not fit DECIMAL(9, 2)"));
        assert!(p("9999999.995").is_err(), "rounds up past the precision");
        for bad in [
            "", "-", ".", "1.2.3", "abc", "1e", "1e1.5", "--1", "1 2", "NaN", "inf",
        ] {
            assert!(p(bad).is_err(), "{bad:?} must be an error");
        }
        assert_eq!(parse_decimal("12", 18, 0), Ok(12));
        assert_eq!(parse_decimal("12.5", 18, 0), Ok(13));
        assert_eq!(
            parse_decimal("999999999999999999", 18, 0),
            Ok(999_999_999_999_999_999)
        );
        assert!(parse_decimal("1e400", 18, 0).is_err());
        assert_eq!(parse_decimal("1e-400", 18, 2), Ok(0));
    }

    #[test]
    fn huge_exponents_and_long_digit_strings_are_cheap_and_exact() {
        let p = |t: &str| parse_decimal(t, 12, 2);
        assert_eq!(p("0e2000000000"), Ok(0));
        assert_eq!(p("-0.000e-2000000000"), Ok(0));
        assert_eq!(p("1e-2000000000"), Ok(0));
        assert!(p("1e2000000000").unwrap_err().contains("does not fit"));
        assert!(p("1e99999999999").unwrap_err().contains("not a decimal"));
        let long = format!("0.{}1", "0".repeat(1 << 20));
        assert_eq!(p(&long), Ok(0));
        let long = format!("{}1.5", "0".repeat(1 << 20));
        assert_eq!(p(&long), Ok(150));
    }

    #[test]
    fn formats() {
        assert_eq!(format_decimal(12345, 2), "123.45");
        assert_eq!(format_decimal(-5, 2), "-0.05");
        assert_eq!(format_decimal(7, 0), "7");
        assert_eq!(format_decimal(0, 3), "0.000");
    }

    proptest! {
        /// Formatting then parsing gives the value back; and parsing agrees with arrow's
        /// Decimal128 parser on exact inputs.
        #[test]
        fn round_trips(v in -999_999_999_999_999_999i64..=999_999_999_999_999_999, scale in 0u8..=18) {
            let text = format_decimal(v as i128, scale);
            prop_assert_eq!(parse_decimal(&text, 18, scale), Ok(v));
            let arrow = arrow::compute::kernels::cast_utils::parse_decimal::<
                arrow::datatypes::Decimal128Type,
            >(&text, 18, scale as i8);
            prop_assert_eq!(arrow.ok(), Some(v as i128));
        }

        /// Rounding half away from zero: the result is within half a unit of the input.
        #[test]
        fn rounds_to_nearest(units in -1_000_000i64..1_000_000, extra in 0u32..1000) {
            // units + extra/1000 at scale 2, written with 5 fraction digits.
            let neg = units < 0;
            let whole = format_decimal(units.unsigned_abs() as i128 * 1000 + extra as i128, 5);
            let text = if neg { format!("-{whole}") } else { whole };
            let got = parse_decimal(&text, 18, 2).unwrap();
            let expect = units.unsigned_abs() as i64 + (extra >= 500) as i64;
            prop_assert_eq!(got, if neg { -expect } else { expect });
        }
    }
}
