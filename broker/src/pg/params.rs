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

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, TimeUnit};
use basalt_query::postgres::types as pgt;
use bytes::Bytes;
use datafusion::common::ScalarValue;
use pgwire::api::Type;
use postgres_types::Kind;

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
        _ => match t.kind() {
            Kind::Array(elem) => {
                DataType::List(Arc::new(Field::new("item", arrow_type(elem)?, true)))
            }
            _ => return None,
        },
    })
}

/// Whether parameters declared as `t` decode (in binary as in text).
pub fn decodes(t: &Type) -> bool {
    arrow_type(t).is_some()
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

/// Reads the big-endian fields of a binary array.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Fault> {
        if self.0.len() < n {
            return Err(Fault::Invalid("binary array parameter is truncated".into()));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn i32(&mut self) -> Result<i32, Fault> {
        Ok(i32::from_be_bytes(fixed(self.take(4)?, "array header")?))
    }
}

/// A list of `elem`'s values (nulls where `None`).
fn list_of(elem: &DataType, values: Vec<Option<ScalarValue>>) -> Result<ScalarValue, Fault> {
    let values = values
        .into_iter()
        .map(|v| match v {
            Some(v) if &v.data_type() == elem => Ok(v),
            Some(v) => v
                .cast_to(elem)
                .map_err(|e| Fault::Invalid(format!("array element: {e}"))),
            None => ScalarValue::try_from(elem)
                .map_err(|e| Fault::Invalid(format!("array element: {e}"))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ScalarValue::List(ScalarValue::new_list_nullable(
        &values, elem,
    )))
}

/// A one-dimensional array in PostgreSQL's binary form: dimensions, a null flag, the element
/// OID, per dimension its length and lower bound, then each element as a length (-1: NULL)
/// and its bytes.
fn binary_array(elem: &Type, b: &[u8]) -> Result<ScalarValue, Fault> {
    let elem_type =
        arrow_type(elem).ok_or_else(|| Fault::Unsupported(format!("{}[]", elem.name())))?;
    let mut c = Cursor(b);
    let dims = c.i32()?;
    let _has_nulls = c.i32()?;
    let _elem_oid = c.i32()?;
    if dims == 0 {
        return list_of(&elem_type, Vec::new());
    }
    if dims != 1 {
        return Err(Fault::Unsupported(format!(
            "{}-dimensional {}[]",
            dims,
            elem.name()
        )));
    }
    let len = c.i32()?;
    let _lower_bound = c.i32()?;
    // Every element takes at least its 4-byte length, so this bounds the allocation.
    let len = usize::try_from(len)
        .ok()
        .filter(|&n| n <= c.0.len() / 4)
        .ok_or_else(|| Fault::Invalid(format!("binary array length {len} is not valid")))?;
    let mut values = Vec::with_capacity(len);
    for _ in 0..len {
        let n = c.i32()?;
        values.push(match n {
            -1 => None,
            n if n < 0 => return Err(Fault::Invalid(format!("array element length {n}"))),
            n => Some(binary(elem, c.take(n as usize)?)?),
        });
    }
    if !c.0.is_empty() {
        return Err(Fault::Invalid(
            "binary array parameter has trailing bytes".into(),
        ));
    }
    list_of(&elem_type, values)
}

/// The elements of a one-dimensional array literal, `{a,"b c",NULL}` (`None`: NULL).
fn array_literal(s: &str) -> Result<Vec<Option<String>>, Fault> {
    let bad = || Fault::Invalid(format!("malformed array literal: {s:?}"));
    let inner = s
        .trim()
        .strip_prefix('{')
        .and_then(|r| r.strip_suffix('}'))
        .ok_or_else(bad)?;
    let mut out = Vec::new();
    if inner.trim().is_empty() {
        return Ok(out);
    }
    let mut chars = inner.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut item = String::new();
        let quoted = chars.peek() == Some(&'"');
        if quoted {
            chars.next();
            loop {
                match chars.next().ok_or_else(bad)? {
                    '\\' => item.push(chars.next().ok_or_else(bad)?),
                    '"' => break,
                    c => item.push(c),
                }
            }
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
        } else {
            while let Some(&c) = chars.peek() {
                match c {
                    ',' => break,
                    '{' | '}' | '"' => return Err(bad()),
                    '\\' => {
                        chars.next();
                        item.push(chars.next().ok_or_else(bad)?);
                        continue;
                    }
                    c => item.push(c),
                }
                chars.next();
            }
            item = item.trim_end().to_string();
        }
        out.push((quoted || !item.eq_ignore_ascii_case("null")).then_some(item));
        match chars.next() {
            None => return Ok(out),
            Some(',') => {}
            Some(_) => return Err(bad()),
        }
    }
}

fn binary(t: &Type, b: &[u8]) -> Result<ScalarValue, Fault> {
    let o = t.oid();
    if let Kind::Array(elem) = t.kind() {
        return binary_array(elem, b);
    }
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
        // pgjdbc's setDate sends `2100-01-01 +00`; PostgreSQL's date input, like this, keeps
        // the date and ignores a time or zone after it.
        Some(DataType::Date32) => {
            let day = s.trim().split([' ', 'T']).next().unwrap_or_default();
            ScalarValue::Utf8(Some(day.to_string()))
                .cast_to(&DataType::Date32)
                .map_err(|_| Fault::Invalid(format!("invalid input syntax for type date: {s:?}")))
        }
        Some(DataType::List(f)) => {
            let elem = f.data_type();
            let values = array_literal(s)?
                .into_iter()
                .map(|e| e.map(|e| text(e.as_bytes(), Some(elem))).transpose())
                .collect::<Result<Vec<_>, _>>()?;
            list_of(elem, values)
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
        for date in ["2100-01-01", "2100-01-01 +00", " 2100-01-01 00:00:00+02"] {
            assert_eq!(
                decode(0, Some(&b(date)), false, None, Some(&DataType::Date32)).unwrap(),
                ScalarValue::Date32(Some(47482)),
                "{date}"
            );
        }
        assert!(decode(
            0,
            Some(&b("01/02/2100")),
            false,
            None,
            Some(&DataType::Date32)
        )
        .is_err());
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

    #[test]
    fn arrays_decode_from_binary_and_text() {
        let list = |dt: DataType, v: Vec<ScalarValue>| {
            ScalarValue::List(ScalarValue::new_list_nullable(&v, &dt))
        };
        // int8[] {7, NULL, -1} in PostgreSQL's binary form.
        let mut raw: Vec<u8> = Vec::new();
        for w in [1i32, 1, 20, 3, 1] {
            raw.extend(w.to_be_bytes());
        }
        raw.extend(8i32.to_be_bytes());
        raw.extend(7i64.to_be_bytes());
        raw.extend((-1i32).to_be_bytes());
        raw.extend(8i32.to_be_bytes());
        raw.extend((-1i64).to_be_bytes());
        let ints = Bytes::from(raw.clone());
        assert_eq!(
            decode(0, Some(&ints), true, Some(&Type::INT8_ARRAY), None).unwrap(),
            list(
                DataType::Int64,
                vec![
                    ScalarValue::Int64(Some(7)),
                    ScalarValue::Int64(None),
                    ScalarValue::Int64(Some(-1))
                ]
            )
        );
        // Truncated, lying about its length, or with trailing bytes: errors, not panics.
        for bad in [
            raw[..raw.len() - 3].to_vec(),
            raw[..10].to_vec(),
            [raw.clone(), vec![0]].concat(),
            {
                let mut r = raw.clone();
                r[12..16].copy_from_slice(&i32::MAX.to_be_bytes());
                r
            },
        ] {
            let e = decode(
                0,
                Some(&Bytes::from(bad)),
                true,
                Some(&Type::INT8_ARRAY),
                None,
            )
            .unwrap_err();
            assert_eq!(e.sqlstate(), "22P02", "{e}");
        }
        // An empty array has no dimensions.
        let empty = Bytes::from(
            [0i32, 0, 25]
                .iter()
                .flat_map(|w| w.to_be_bytes())
                .collect::<Vec<_>>(),
        );
        assert_eq!(
            decode(0, Some(&empty), true, Some(&Type::TEXT_ARRAY), None).unwrap(),
            list(DataType::Utf8, vec![])
        );
        // Text literals: quoting, escapes and NULL; elements parsed as the element type.
        let text_list = Some(DataType::List(Arc::new(Field::new(
            "item",
            DataType::Utf8,
            true,
        ))));
        assert_eq!(
            decode(
                0,
                Some(&Bytes::from(r#"{ios,"a,b","q\"x",NULL,"NULL"}"#)),
                false,
                None,
                text_list.as_ref()
            )
            .unwrap(),
            list(
                DataType::Utf8,
                vec![
                    ScalarValue::Utf8(Some("ios".into())),
                    ScalarValue::Utf8(Some("a,b".into())),
                    ScalarValue::Utf8(Some("q\"x".into())),
                    ScalarValue::Utf8(None),
                    ScalarValue::Utf8(Some("NULL".into())),
                ]
            )
        );
        assert_eq!(
            decode(
                0,
                Some(&Bytes::from("{1,2}")),
                false,
                Some(&Type::INT4_ARRAY),
                None
            )
            .unwrap(),
            list(
                DataType::Int32,
                vec![ScalarValue::Int32(Some(1)), ScalarValue::Int32(Some(2))]
            )
        );
        for bad in ["1,2", "{1,{2}}", "{\"open", "{1,x}"] {
            let e = decode(
                0,
                Some(&Bytes::from(bad)),
                false,
                Some(&Type::INT4_ARRAY),
                None,
            )
            .unwrap_err();
            assert_eq!(e.sqlstate(), "22P02", "{bad}: {e}");
        }
    }

    proptest::proptest! {
        /// Whatever bytes a client binds, decoding answers a value or an error.
        #[test]
        fn arbitrary_parameter_bytes_never_panic(
            raw in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
            which in 0usize..12,
            binary_format in proptest::prelude::any::<bool>(),
        ) {
            let types = [
                Type::INT8_ARRAY, Type::TEXT_ARRAY, Type::FLOAT8_ARRAY, Type::BOOL_ARRAY,
                Type::NUMERIC, Type::TIMESTAMP, Type::DATE, Type::INT4, Type::TEXT,
                Type::NUMERIC_ARRAY, Type::TIMESTAMPTZ_ARRAY, Type::INT2,
            ];
            let _ = decode(0, Some(&Bytes::from(raw)), binary_format, Some(&types[which]), None);
        }
    }
}
