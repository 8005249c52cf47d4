//! Query results as PostgreSQL rows. In: Arrow batches and the format (text or binary) the
//! client asked for per column. Out: the row description ([`FieldInfo`]s typed by
//! [`pg_type_of`]) and one `DataRow` per result row.
//!
//! Every column is first cast to the canonical Arrow type of its PostgreSQL type (dictionary
//! strings to `Utf8`, any timestamp unit to microseconds, decimals to `f64`, …), so the
//! encoder handles one Arrow type per PostgreSQL type. Types without a PostgreSQL
//! counterpart arrive as their text rendering.

use std::sync::Arc;

use super::numeric::PgNumeric;
use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BooleanArray, Date32Array, Decimal128Array,
    Float32Array, Float64Array, Int16Array, Int32Array, Int64Array, ListArray, StringArray,
    Time64MicrosecondArray, TimestampMicrosecondArray, UInt32Array,
};
use arrow::datatypes::{DataType, Field, Int16Type, Int32Type, Int64Type, TimeUnit};
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use basalt_query::postgres::types::{self as pgt, pg_type_of};
use chrono::{DateTime, NaiveDate, NaiveTime};
use pgwire::api::portal::Format;
use pgwire::api::results::{DataRowEncoder, FieldInfo};
use pgwire::api::Type;
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::data::DataRow;

/// The pgwire type for a PostgreSQL OID from [`pgt`].
pub fn pg_wire_type(oid: u32) -> Type {
    Type::from_oid(oid).unwrap_or(Type::TEXT)
}

/// The row description of a result with `schema`'s columns in `format`.
pub fn fields(schema: &arrow::datatypes::Schema, format: &Format) -> Vec<FieldInfo> {
    schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let t = pg_type_of(f.data_type());
            FieldInfo::new(
                f.name().clone(),
                None,
                None,
                pg_wire_type(t.oid),
                format.format_for(i),
            )
            .with_type_size(t.len)
        })
        .collect()
}

fn list_of(dt: DataType) -> DataType {
    DataType::List(Arc::new(Field::new("item", dt, true)))
}

/// The Arrow type values of PostgreSQL type `t` are encoded from (`None`: text rendering).
fn canonical(t: pgt::PgType, dt: &DataType) -> Option<DataType> {
    Some(match t {
        pgt::BOOL => DataType::Boolean,
        pgt::INT2 => DataType::Int16,
        pgt::INT4 => DataType::Int32,
        pgt::INT8 => DataType::Int64,
        pgt::OID => DataType::UInt32,
        pgt::FLOAT4 => DataType::Float32,
        pgt::FLOAT8 => DataType::Float64,
        pgt::BYTEA => DataType::Binary,
        pgt::DATE => DataType::Date32,
        pgt::NUMERIC => match dt {
            DataType::Decimal32(p, s) | DataType::Decimal64(p, s) | DataType::Decimal128(p, s) => {
                DataType::Decimal128(*p, *s)
            }
            _ => return None,
        },
        pgt::TIME => DataType::Time64(TimeUnit::Microsecond),
        pgt::TIMESTAMP => DataType::Timestamp(TimeUnit::Microsecond, None),
        pgt::TIMESTAMPTZ => DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
        pgt::TEXT => match dt {
            DataType::Null => DataType::Null,
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => DataType::Utf8,
            DataType::Dictionary(_, v) if pg_type_of(v) == pgt::TEXT => {
                return canonical(pgt::TEXT, v);
            }
            _ => return None,
        },
        pgt::BOOL_ARRAY => list_of(DataType::Boolean),
        pgt::INT2_ARRAY => list_of(DataType::Int16),
        pgt::INT4_ARRAY => list_of(DataType::Int32),
        pgt::INT8_ARRAY => list_of(DataType::Int64),
        pgt::FLOAT4_ARRAY => list_of(DataType::Float32),
        pgt::FLOAT8_ARRAY => list_of(DataType::Float64),
        pgt::TEXT_ARRAY => list_of(DataType::Utf8),
        pgt::OID_ARRAY => list_of(DataType::UInt32),
        _ => return None,
    })
}

/// A result column ready to encode.
enum Column {
    Native(ArrayRef),
    /// Rendered as text: (validity source, rendered values).
    Text(ArrayRef, Vec<String>),
}

fn prepare(array: &ArrayRef) -> PgWireResult<Column> {
    let t = pg_type_of(array.data_type());
    match canonical(t, array.data_type()) {
        Some(dt) if &dt == array.data_type() => Ok(Column::Native(array.clone())),
        Some(dt) => arrow::compute::cast(array, &dt)
            .map(Column::Native)
            .map_err(api_error),
        None => {
            let f = ArrayFormatter::try_new(array.as_ref(), &FormatOptions::default())
                .map_err(api_error)?;
            let values = (0..array.len()).map(|i| f.value(i).to_string()).collect();
            Ok(Column::Text(array.clone(), values))
        }
    }
}

fn api_error(e: impl std::error::Error + Send + Sync + 'static) -> PgWireError {
    PgWireError::ApiError(Box::new(e))
}

const EPOCH_DATE: NaiveDate = match NaiveDate::from_ymd_opt(1970, 1, 1) {
    Some(d) => d,
    None => panic!("valid date"),
};

fn list_values<T>(a: &ListArray, row: usize, f: impl Fn(&ArrayRef, usize) -> T) -> Vec<Option<T>> {
    let v = a.value(row);
    (0..v.len())
        .map(|i| if v.is_null(i) { None } else { Some(f(&v, i)) })
        .collect()
}

fn encode_cell(enc: &mut DataRowEncoder, col: &Column, row: usize) -> PgWireResult<()> {
    let array = match col {
        Column::Native(a) => a,
        Column::Text(a, values) => {
            let v = (!a.is_null(row)).then(|| values[row].as_str());
            return enc.encode_field(&v);
        }
    };
    if array.is_null(row) {
        return enc.encode_field(&None::<i32>);
    }
    match array.data_type() {
        DataType::Null => enc.encode_field(&None::<i32>),
        DataType::Boolean => enc.encode_field(
            &array
                .as_any()
                .downcast_ref::<BooleanArray>()
                .map(|a| a.value(row)),
        ),
        DataType::Int16 => enc.encode_field(
            &array
                .as_any()
                .downcast_ref::<Int16Array>()
                .map(|a| a.value(row)),
        ),
        DataType::Int32 => enc.encode_field(
            &array
                .as_any()
                .downcast_ref::<Int32Array>()
                .map(|a| a.value(row)),
        ),
        DataType::Int64 => enc.encode_field(
            &array
                .as_any()
                .downcast_ref::<Int64Array>()
                .map(|a| a.value(row)),
        ),
        DataType::UInt32 => enc.encode_field(
            &array
                .as_any()
                .downcast_ref::<UInt32Array>()
                .map(|a| a.value(row)),
        ),
        DataType::Float32 => enc.encode_field(
            &array
                .as_any()
                .downcast_ref::<Float32Array>()
                .map(|a| a.value(row)),
        ),
        DataType::Float64 => enc.encode_field(
            &array
                .as_any()
                .downcast_ref::<Float64Array>()
                .map(|a| a.value(row)),
        ),
        DataType::Utf8 => enc.encode_field(
            &array
                .as_any()
                .downcast_ref::<StringArray>()
                .map(|a| a.value(row)),
        ),
        DataType::Binary => enc.encode_field(
            &array
                .as_any()
                .downcast_ref::<BinaryArray>()
                .map(|a| a.value(row)),
        ),
        DataType::Decimal128(_, scale) => {
            let v = array
                .as_any()
                .downcast_ref::<Decimal128Array>()
                .map(|a| a.value(row))
                .unwrap_or_default();
            // A negative scale means trailing zeros: write them out.
            let (unscaled, scale) = match u32::try_from(*scale) {
                Ok(s) => (v, s as u8),
                Err(_) => (
                    v.saturating_mul(10i128.saturating_pow(scale.unsigned_abs() as u32)),
                    0,
                ),
            };
            enc.encode_field(&PgNumeric { unscaled, scale })
        }
        DataType::Date32 => {
            enc.encode_field(&array.as_any().downcast_ref::<Date32Array>().and_then(|a| {
                EPOCH_DATE.checked_add_signed(chrono::Duration::days(a.value(row) as i64))
            }))
        }
        DataType::Time64(TimeUnit::Microsecond) => enc.encode_field(
            &array
                .as_any()
                .downcast_ref::<Time64MicrosecondArray>()
                .and_then(|a| {
                    let us = a.value(row);
                    NaiveTime::from_num_seconds_from_midnight_opt(
                        (us / 1_000_000) as u32,
                        ((us % 1_000_000) * 1000) as u32,
                    )
                }),
        ),
        DataType::Timestamp(TimeUnit::Microsecond, tz) => {
            let us = array
                .as_any()
                .downcast_ref::<TimestampMicrosecondArray>()
                .map(|a| a.value(row));
            let dt = us.and_then(DateTime::from_timestamp_micros);
            if tz.is_some() {
                enc.encode_field(&dt)
            } else {
                enc.encode_field(&dt.map(|d| d.naive_utc()))
            }
        }
        DataType::List(f) => {
            let l = array.as_list::<i32>();
            match f.data_type() {
                DataType::Boolean => {
                    enc.encode_field(&list_values(l, row, |v, i| v.as_boolean().value(i)))
                }
                DataType::Int16 => enc.encode_field(&list_values(l, row, |v, i| {
                    v.as_primitive::<Int16Type>().value(i)
                })),
                DataType::Int32 => enc.encode_field(&list_values(l, row, |v, i| {
                    v.as_primitive::<Int32Type>().value(i)
                })),
                DataType::Int64 => enc.encode_field(&list_values(l, row, |v, i| {
                    v.as_primitive::<Int64Type>().value(i)
                })),
                DataType::UInt32 => enc.encode_field(&list_values(l, row, |v, i| {
                    v.as_primitive::<arrow::datatypes::UInt32Type>().value(i)
                })),
                DataType::Float32 => enc.encode_field(&list_values(l, row, |v, i| {
                    v.as_primitive::<arrow::datatypes::Float32Type>().value(i)
                })),
                DataType::Float64 => enc.encode_field(&list_values(l, row, |v, i| {
                    v.as_primitive::<arrow::datatypes::Float64Type>().value(i)
                })),
                _ => enc.encode_field(&list_values(l, row, |v, i| {
                    v.as_string::<i32>().value(i).to_string()
                })),
            }
        }
        other => Err(PgWireError::ApiError(
            format!("cannot encode a value of Arrow type {other} for PostgreSQL").into(),
        )),
    }
}

/// Encodes every row of `batches` for a client that described the result as `fields`.
/// Encodes every row; after each batch `budget` is told how many bytes the batch's rows
/// took and may stop the encoding with its error (memory and response-size limits).
pub fn rows(
    batches: &[RecordBatch],
    fields: &Arc<Vec<FieldInfo>>,
    mut budget: impl FnMut(usize) -> PgWireResult<()>,
) -> PgWireResult<Vec<DataRow>> {
    let mut out = Vec::with_capacity(batches.iter().map(|b| b.num_rows()).sum());
    let mut enc = DataRowEncoder::new(fields.clone());
    for batch in batches {
        let columns = batch
            .columns()
            .iter()
            .map(prepare)
            .collect::<PgWireResult<Vec<_>>>()?;
        let mut bytes = 0usize;
        for row in 0..batch.num_rows() {
            for col in &columns {
                encode_cell(&mut enc, col, row)?;
            }
            let r = enc.take_row();
            bytes += r.data.len() + 8;
            out.push(r);
        }
        budget(bytes)?;
    }
    Ok(out)
}
