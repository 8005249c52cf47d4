//! PostgreSQL `numeric` values from Arrow decimals. In: an unscaled integer and its scale
//! (one `Decimal128` cell). Out: the text form (`123.45`) or the binary form PostgreSQL's
//! `numeric_send` writes (base-10000 digits with weight, sign and display scale), so drivers
//! that ask for binary results (asyncpg, pgjdbc) read exact values.

use std::error::Error;

use basalt_segment::decimal::format_decimal;
use bytes::{BufMut, BytesMut};
use pgwire::api::Type;
use pgwire::types::format::FormatOptions;
use pgwire::types::ToSqlText;
use postgres_types::{to_sql_checked, IsNull, ToSql};

/// One `numeric` value: `unscaled / 10^scale`.
#[derive(Debug, Clone, Copy)]
pub struct PgNumeric {
    pub unscaled: i128,
    pub scale: u8,
}

type BoxError = Box<dyn Error + Sync + Send>;

impl PgNumeric {
    /// `numeric_send`'s layout: ndigits, weight, sign, dscale (each 16 bits), then digits.
    fn binary(&self, out: &mut BytesMut) {
        let text = self.unscaled.unsigned_abs().to_string();
        let scale = self.scale as usize;
        let padded = format!("{text:0>width$}", width = scale + 1);
        let (int, frac) = padded.split_at(padded.len() - scale);
        // Integer digits padded on the left, fraction digits on the right, to groups of 4.
        let int = format!("{}{int}", "0".repeat((4 - int.len() % 4) % 4));
        let frac = format!("{frac}{}", "0".repeat((4 - frac.len() % 4) % 4));
        let group = |s: &str| -> Vec<i16> {
            s.as_bytes()
                .chunks(4)
                .map(|c| c.iter().fold(0i16, |a, d| a * 10 + (d - b'0') as i16))
                .collect()
        };
        let mut digits = group(&int);
        let mut weight = digits.len() as i16 - 1;
        digits.extend(group(&frac));
        let lead = digits.iter().take_while(|&&d| d == 0).count();
        digits.drain(..lead);
        weight -= lead as i16;
        while digits.last() == Some(&0) {
            digits.pop();
        }
        if digits.is_empty() {
            weight = 0;
        }
        out.put_i16(digits.len() as i16);
        out.put_i16(weight);
        out.put_u16(if self.unscaled < 0 && !digits.is_empty() {
            0x4000
        } else {
            0
        });
        out.put_u16(self.scale as u16);
        for d in digits {
            out.put_i16(d);
        }
    }

    /// Reads PostgreSQL's binary `numeric` (what a client sends for a `numeric` parameter in
    /// binary format): the value at its display scale. NaN and infinities, a malformed
    /// layout, and values beyond 38 digits are errors naming what is wrong.
    pub fn from_binary(b: &[u8]) -> Result<PgNumeric, String> {
        let word = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
        if b.len() < 8 {
            return Err(format!(
                "binary numeric is {} bytes, shorter than its 8-byte header",
                b.len()
            ));
        }
        let (ndigits, weight, sign, dscale) =
            (word(0) as i16, word(2) as i16 as i32, word(4), word(6));
        if ndigits < 0 || b.len() != 8 + 2 * ndigits as usize {
            return Err(format!(
                "binary numeric declares {ndigits} digits in {} bytes",
                b.len()
            ));
        }
        let negative = match sign {
            0x0000 => false,
            0x4000 => true,
            0xC000 => return Err("NaN is not a value a DECIMAL holds".into()),
            _ => return Err("infinity is not a value a DECIMAL holds".into()),
        };
        if dscale > 38 {
            return Err(format!("scale {dscale} is beyond 38 digits"));
        }
        let too_big = || "the value has more than 38 digits".to_string();
        let mut unscaled: i128 = 0;
        for i in 0..ndigits as usize {
            let d = word(8 + 2 * i) as i16;
            if !(0..=9999).contains(&d) {
                return Err(format!("binary numeric digit {d} is not base 10000"));
            }
            // Digit i counts 10000^(weight - i): in units of 10^-dscale that is 10^exp.
            let exp = 4 * (weight - i as i32) + dscale as i32;
            let term = match exp {
                e if e >= 0 => 10i128
                    .checked_pow(e as u32)
                    .and_then(|p| p.checked_mul(d as i128))
                    .ok_or_else(too_big)?,
                // Digits below the display scale (PostgreSQL never sends them) are dropped.
                e if e > -4 => d as i128 / 10i128.pow((-e) as u32),
                _ => 0,
            };
            unscaled = unscaled.checked_add(term).ok_or_else(too_big)?;
        }
        if unscaled >= 10i128.pow(38) {
            return Err(too_big());
        }
        Ok(PgNumeric {
            unscaled: if negative { -unscaled } else { unscaled },
            scale: dscale as u8,
        })
    }
}

impl ToSql for PgNumeric {
    fn to_sql(&self, _ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        self.binary(out);
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::NUMERIC
    }

    to_sql_checked!();
}

impl ToSqlText for PgNumeric {
    fn to_sql_text(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
        _format_options: &FormatOptions,
    ) -> Result<IsNull, BoxError> {
        out.put_slice(format_decimal(self.unscaled, self.scale).as_bytes());
        Ok(IsNull::No)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes PostgreSQL 15 sends for `SELECT x::numeric` (`numeric_send`).
    fn send(unscaled: i128, scale: u8) -> Vec<u8> {
        let mut out = BytesMut::new();
        PgNumeric { unscaled, scale }.binary(&mut out);
        out.to_vec()
    }

    fn words(w: &[i16]) -> Vec<u8> {
        w.iter().flat_map(|x| x.to_be_bytes()).collect()
    }

    #[test]
    fn binary_matches_numeric_send() {
        // 123.45: digits [123, 4500], weight 0, dscale 2.
        assert_eq!(send(12345, 2), words(&[2, 0, 0, 2, 123, 4500]));
        // -0.05: digits [500], weight -1, negative.
        assert_eq!(send(-5, 2), words(&[1, -1, 0x4000, 2, 500]));
        // 0.00: no digits.
        assert_eq!(send(0, 2), words(&[0, 0, 0, 2]));
        // 12345678: digits [1234, 5678], weight 1.
        assert_eq!(send(12345678, 0), words(&[2, 1, 0, 0, 1234, 5678]));
        // 10000.0000: digits [1], weight 1 (trailing zero groups dropped), dscale 4.
        assert_eq!(send(100_000_000, 4), words(&[1, 1, 0, 4, 1]));
        // 0.0001: digits [1], weight -1.
        assert_eq!(send(1, 4), words(&[1, -1, 0, 4, 1]));
        // 0.00001: digits [1000], weight -2.
        assert_eq!(send(1, 5), words(&[1, -2, 0, 5, 1000]));
    }

    #[test]
    fn binary_parameters_read_back() {
        for (v, s) in [
            (12345i128, 2u8),
            (-5, 2),
            (0, 2),
            (12345678, 0),
            (100_000_000, 4),
            (1, 5),
            (-99_999_999_999_999_999_999_999_999_999_999_999, 3),
        ] {
            let n = PgNumeric::from_binary(&send(v, s)).unwrap();
            assert_eq!((n.unscaled, n.scale), (v, s));
        }
        for (bytes, why) in [
            (vec![0u8; 4], "shorter"),
            (words(&[2, 0, 0, 2, 1]), "declares 2 digits"),
            (words(&[0, 0, 0xC000u16 as i16, 0]), "NaN"),
            (words(&[0, 0, 0xD000u16 as i16, 0]), "infinity"),
            (words(&[1, 0, 0, 0, 10000]), "base 10000"),
            (words(&[1, 20, 0, 0, 1]), "38 digits"),
            (words(&[0, 0, 0, 40]), "scale 40"),
        ] {
            let e = PgNumeric::from_binary(&bytes).unwrap_err();
            assert!(e.contains(why), "{why}: {e}");
        }
    }
}
