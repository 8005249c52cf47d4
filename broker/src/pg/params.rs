//! Bound parameters of the extended query protocol. In: a portal's raw parameter bytes, the
//! format (text or binary) of each, the type the client declared (or none), and the type
//! DataFusion inferred for the `$n` placeholder. Out: DataFusion [`ScalarValue`]s.
//!
//! Text parameters are parsed into the declared type, else into the inferred one (an untyped
//! `'42'` compared with a LONG column binds as 42). Binary parameters need a declared type;
//! the common ones (bool, integers, floats, numeric, text, bytea, date, timestamp[tz], oid)
//! decode.
//! Every failure is a [`ParamError`] with its SQLSTATE: malformed input 22P02, a date or
//! timestamp out of range (binary `infinity` included) 22008, an unsupported binary type
//! 0A000.

use arrow::datatypes::{DataType, TimeUnit};
use basalt_query::postgres::types as pgt;
use bytes::Bytes;
use datafusion::common::ScalarValue;
use pgwire::api::Type;

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
/// Days from the Unix epoch to PostgreSQL's.
const PG_EPOCH_DAYS: i32 = 10_957;

/// The Arrow type a declared PostgreSQL parameter type decodes into.
fn arrow_type(t: &Type) -> Option<DataType> {
    Some(match t.oid() {
        o if o == pgt::BOOL.oid => DataType::Boolean,
        o if o == pgt::INT2.oid => DataType::Int16,
        o if o == pgt::INT4.oid => DataType::Int32,
        o if o == pgt::INT8.oid => DataType::Int64,
        o if o == pgt::OID.oid => DataType::UInt32,
        o if o == pgt::FLOAT4.oid => DataType::Float32,
        o if o == pgt::FLOAT8.oid || o == pgt::NUMERIC.oid => DataType::Float64,
        o if o == pgt::TEXT.oid || o == pgt::VARCHAR.oid || o == pgt::NAME.oid || o == 1042 => {
            DataType::Utf8
        }
        o if o == pgt::BYTEA.oid => DataType::Binary,
        o if o == pgt::DATE.oid => DataType::Date32,
        o if o == pgt::TIMESTAMP.oid => DataType::Timestamp(TimeUnit::Microsecond, None),
        o if o == pgt::TIMESTAMPTZ.oid => {
            DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into()))
        }
        _ => return None,
    })
}

/// Why a bound parameter could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    #[error("parameter ${index}: {reason}")]
    Invalid { index: usize, reason: String },
    #[error("parameter ${index}: {what} out of range ({reason})")]
    OutOfRange {
        index: usize,
        what: &'static str,
        reason: String,
    },
    #[error("binary parameter ${index} has no declared type; send it as text")]
    Untyped { index: usize },
    #[error("parameter ${index}: binary parameters of type {ty} are not supported; send them in text format")]
    Unsupported { index: usize, ty: String },
}

impl ParamError {
    pub fn sqlstate(&self) -> &'static str {
        match self {
            ParamError::Invalid { .. } | ParamError::Untyped { .. } => "22P02",
            ParamError::OutOfRange { .. } => "22008",
            ParamError::Unsupported { .. } => "0A000",
        }
    }
}

/// A failure before its parameter's index is known.
enum Fault {
    Invalid(String),
    OutOfRange(&'static str, String),
    Unsupported(String),
}

impl Fault {
    fn at(self, index: usize) -> ParamError {
        match self {
            Fault::Invalid(reason) => ParamError::Invalid { index, reason },
            Fault::OutOfRange(what, reason) => ParamError::OutOfRange {
                index,
                what,
                reason,
            },
            Fault::Unsupported(ty) => ParamError::Unsupported { index, ty },
        }
    }
}

fn fixed<const N: usize>(b: &[u8], what: &str) -> Result<[u8; N], Fault> {
    b.try_into().map_err(|_| {
        Fault::Invalid(format!(
            "binary {what} parameter must be {N} bytes, got {}",
            b.len()
        ))
    })
}

fn binary(t: &Type, b: &[u8]) -> Result<ScalarValue, Fault> {
    let o = t.oid();
    Ok(if o == pgt::BOOL.oid {
        ScalarValue::Boolean(Some(fixed::<1>(b, "bool")?[0] != 0))
    } else if o == pgt::INT2.oid {
        ScalarValue::Int16(Some(i16::from_be_bytes(fixed(b, "int2")?)))
    } else if o == pgt::INT4.oid {
        ScalarValue::Int32(Some(i32::from_be_bytes(fixed(b, "int4")?)))
    } else if o == pgt::INT8.oid {
        ScalarValue::Int64(Some(i64::from_be_bytes(fixed(b, "int8")?)))
    } else if o == pgt::OID.oid {
        ScalarValue::UInt32(Some(u32::from_be_bytes(fixed(b, "oid")?)))
    } else if o == pgt::FLOAT4.oid {
        ScalarValue::Float32(Some(f32::from_be_bytes(fixed(b, "float4")?)))
    } else if o == pgt::FLOAT8.oid {
        ScalarValue::Float64(Some(f64::from_be_bytes(fixed(b, "float8")?)))
    } else if o == pgt::NUMERIC.oid {
        let n = super::numeric::PgNumeric::from_binary(b).map_err(Fault::Invalid)?;
        ScalarValue::Decimal128(Some(n.unscaled), 38, n.scale as i8)
    } else if o == pgt::BYTEA.oid {
        ScalarValue::Binary(Some(b.to_vec()))
    } else if o == pgt::DATE.oid {
        // PostgreSQL sends `infinity` as i32::MAX and `-infinity` as i32::MIN.
        let raw = i32::from_be_bytes(fixed(b, "date")?);
        let days = raw
            .checked_add(PG_EPOCH_DAYS)
            .filter(|_| raw != i32::MAX && raw != i32::MIN)
            .ok_or_else(|| {
                Fault::OutOfRange("date", "infinity and far dates are not supported".into())
            })?;
        ScalarValue::Date32(Some(days))
    } else if o == pgt::TIMESTAMP.oid || o == pgt::TIMESTAMPTZ.oid {
        let raw = i64::from_be_bytes(fixed(b, "timestamp")?);
        let us = raw
            .checked_add(PG_EPOCH_MICROS)
            .filter(|_| raw != i64::MAX && raw != i64::MIN)
            .ok_or_else(|| {
                Fault::OutOfRange(
                    "timestamp",
                    "infinity and far timestamps are not supported".into(),
                )
            })?;
        let tz = (o == pgt::TIMESTAMPTZ.oid).then(|| "+00:00".into());
        ScalarValue::TimestampMicrosecond(Some(us), tz)
    } else if arrow_type(t) == Some(DataType::Utf8) || o == pgt::UNKNOWN.oid {
        ScalarValue::Utf8(Some(
            std::str::from_utf8(b)
                .map_err(|_| Fault::Invalid("text parameter is not valid UTF-8".into()))?
                .to_string(),
        ))
    } else {
        return Err(Fault::Unsupported(t.name().to_string()));
    })
}

fn text(b: &[u8], target: Option<&DataType>) -> Result<ScalarValue, Fault> {
    let s = std::str::from_utf8(b)
        .map_err(|_| Fault::Invalid("text parameter is not valid UTF-8".into()))?;
    let v = ScalarValue::Utf8(Some(s.to_string()));
    match target {
        None | Some(DataType::Utf8) => Ok(v),
        Some(DataType::Boolean) => match s.trim().to_ascii_lowercase().as_str() {
            "t" | "true" | "yes" | "on" | "1" | "y" => Ok(ScalarValue::Boolean(Some(true))),
            "f" | "false" | "no" | "off" | "0" | "n" => Ok(ScalarValue::Boolean(Some(false))),
            _ => Err(Fault::Invalid(format!(
                "invalid input syntax for type boolean: {s:?}"
            ))),
        },
        Some(DataType::Decimal128(p, scale))
            if *p <= basalt_segment::types::MAX_DECIMAL_PRECISION && *scale >= 0 =>
        {
            basalt_segment::decimal::parse_decimal(s, *p, *scale as u8)
                .map(|u| ScalarValue::Decimal128(Some(u as i128), *p, *scale))
                .map_err(Fault::Invalid)
        }
        Some(dt) => v
            .cast_to(dt)
            .map_err(|_| Fault::Invalid(format!("invalid input syntax for type {dt}: {s:?}"))),
    }
}

/// Decodes parameter `i` of a portal: `raw` is `None` for SQL NULL.
pub fn decode(
    i: usize,
    raw: Option<&Bytes>,
    binary_format: bool,
    declared: Option<&Type>,
    inferred: Option<&DataType>,
) -> Result<ScalarValue, ParamError> {
    let declared = declared.filter(|t| t.oid() != 0 && t.oid() != pgt::UNKNOWN.oid);
    // Numeric text bound to a decimal comparison is parsed exactly, not through a double.
    let exact_decimal = matches!(inferred, Some(DataType::Decimal128(..)))
        && declared.is_none_or(|t| t.oid() == pgt::NUMERIC.oid);
    let target = match exact_decimal {
        true => inferred.cloned(),
        false => declared.and_then(arrow_type).or_else(|| inferred.cloned()),
    };
    let Some(raw) = raw else {
        return Ok(match &target {
            Some(dt) => ScalarValue::try_from(dt).unwrap_or(ScalarValue::Null),
            None => ScalarValue::Null,
        });
    };
    let index = i + 1;
    let value = if binary_format {
        let t = declared.ok_or(ParamError::Untyped { index })?;
        binary(t, raw)
    } else {
        text(raw, target.as_ref())
    }
    .map_err(|f| f.at(index))?;
    // An inferred type wins when it differs (a float4 bound to a DOUBLE comparison).
    match inferred {
        Some(dt) if dt != &value.data_type() && !matches!(dt, DataType::Null) => {
            value.cast_to(dt).map_err(|e| ParamError::Invalid {
                index,
                reason: format!("cannot use it as {dt}: {e}"),
            })
        }
        _ => Ok(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_decode_by_declared_then_inferred_type() {
        let b = |s: &str| Bytes::from(s.to_string());
        assert_eq!(
            decode(0, Some(&b("42")), false, None, Some(&DataType::Int64)).unwrap(),
            ScalarValue::Int64(Some(42))
        );
        assert_eq!(
            decode(0, Some(&b("US")), false, None, None).unwrap(),
            ScalarValue::Utf8(Some("US".into()))
        );
        assert_eq!(
            decode(0, Some(&b("true")), false, Some(&Type::BOOL), None).unwrap(),
            ScalarValue::Boolean(Some(true))
        );
        let eight = Bytes::from(7i64.to_be_bytes().to_vec());
        assert_eq!(
            decode(0, Some(&eight), true, Some(&Type::INT8), None).unwrap(),
            ScalarValue::Int64(Some(7))
        );
        // 2000-01-01T00:00:01Z in PostgreSQL's binary timestamp form
        let ts = Bytes::from(1_000_000i64.to_be_bytes().to_vec());
        assert_eq!(
            decode(0, Some(&ts), true, Some(&Type::TIMESTAMPTZ), None).unwrap(),
            ScalarValue::TimestampMicrosecond(Some(946_684_801_000_000), Some("+00:00".into()))
        );
        assert_eq!(
            decode(1, None, false, None, Some(&DataType::Int64)).unwrap(),
            ScalarValue::Int64(None)
        );
        let e = decode(2, Some(&b("x")), false, None, Some(&DataType::Int64)).unwrap_err();
        assert!(
            e.to_string().contains("$3") && e.sqlstate() == "22P02",
            "{e}"
        );
        // Binary numeric 123.45, bound to a DECIMAL(12, 2) comparison.
        let numeric = Bytes::from(
            [2i16, 0, 0, 2, 123, 4500]
                .iter()
                .flat_map(|w| w.to_be_bytes())
                .collect::<Vec<u8>>(),
        );
        assert_eq!(
            decode(
                0,
                Some(&numeric),
                true,
                Some(&Type::NUMERIC),
                Some(&DataType::Decimal128(12, 2))
            )
            .unwrap(),
            ScalarValue::Decimal128(Some(12345), 12, 2)
        );
        // Text numerics bound to a decimal are exact (through a double, 18 digits are not).
        let dec = Some(DataType::Decimal128(18, 2));
        for declared in [None, Some(&Type::NUMERIC)] {
            assert_eq!(
                decode(
                    0,
                    Some(&b("9999999999999999.99")),
                    false,
                    declared,
                    dec.as_ref()
                )
                .unwrap(),
                ScalarValue::Decimal128(Some(999_999_999_999_999_999), 18, 2)
            );
            assert_eq!(
                decode(0, Some(&b("0.075")), false, declared, dec.as_ref()).unwrap(),
                ScalarValue::Decimal128(Some(8), 18, 2)
            );
            let e = decode(0, Some(&b("1e40")), false, declared, dec.as_ref()).unwrap_err();
            assert!(e.to_string().contains("does not fit"), "{e}");
        }
        let e = decode(0, Some(&eight), true, None, None).unwrap_err();
        assert!(e.to_string().contains("no declared type"), "{e}");
        assert!(decode(0, Some(&b("abc")), true, Some(&Type::INT8), None).is_err());
        // Binary infinity (and values past the range) are errors, not overflows.
        for (raw, ty) in [
            (i64::MAX.to_be_bytes().to_vec(), Type::TIMESTAMP),
            (i64::MIN.to_be_bytes().to_vec(), Type::TIMESTAMPTZ),
            ((i64::MAX - 5).to_be_bytes().to_vec(), Type::TIMESTAMP),
            (i32::MAX.to_be_bytes().to_vec(), Type::DATE),
            (i32::MIN.to_be_bytes().to_vec(), Type::DATE),
        ] {
            let e = decode(0, Some(&Bytes::from(raw)), true, Some(&ty), None).unwrap_err();
            assert_eq!(e.sqlstate(), "22008", "{e}");
        }
    }
}
