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
}
