//! Row-level access for keyed tables. In: Arrow arrays as ingestion decodes them (UTF-8
//! strings) or as segments materialise them (dictionary-encoded strings). Out: each row's
//! primary key hash, its comparison value, and — for PARTIAL merges — its values as
//! [`Cell`]s and back into a batch.
//!
//! A key hashes the same whichever array shape it is read from: each key column contributes
//! a type tag and its value's bytes (strings length-prefixed), hashed with xxh3-128.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanBuilder, Date32Builder, Decimal128Builder, Float32Builder,
    Float64Builder, Int32Builder, Int64Builder, ListBuilder, StringBuilder,
    TimestampMillisecondBuilder,
};
use arrow::datatypes::{
    DataType, Date32Type, Decimal128Type, Float32Type, Float64Type, Int32Type, Int64Type,
    SchemaRef, TimeUnit, TimestampMillisecondType,
};
use arrow::record_batch::RecordBatch;

use super::keymap::KeyHash;
use crate::error::{IngestError, Result};

fn unsupported(dt: &DataType) -> IngestError {
    IngestError::Keyed(format!(
        "keyed tables do not support columns of type {dt:?}"
    ))
}

/// The string at `i` of a UTF-8 or dictionary-of-UTF-8 array.
fn str_at(a: &dyn Array, i: usize) -> Result<&str> {
    match a.data_type() {
        DataType::Utf8 => Ok(a.as_string::<i32>().value(i)),
        DataType::Dictionary(k, v) if **k == DataType::Int32 && **v == DataType::Utf8 => {
            let d = a.as_dictionary::<Int32Type>();
            let key = d.keys().value(i) as usize;
            Ok(d.values().as_string::<i32>().value(key))
        }
        other => Err(unsupported(other)),
    }
}

/// Appends row `i` of one key column to `buf` (tag, then the value's bytes).
fn key_bytes(a: &dyn Array, i: usize, buf: &mut Vec<u8>) -> Result<()> {
    if a.is_null(i) {
        buf.push(0);
        return Ok(());
    }
    match a.data_type() {
        DataType::Utf8 | DataType::Dictionary(..) => {
            let s = str_at(a, i)?;
            buf.push(1);
            buf.extend_from_slice(&(s.len() as u32).to_le_bytes());
            buf.extend_from_slice(s.as_bytes());
        }
        DataType::Int32 => {
            buf.push(2);
            buf.extend_from_slice(&(a.as_primitive::<Int32Type>().value(i) as i64).to_le_bytes());
        }
        DataType::Int64 => {
            buf.push(2);
            buf.extend_from_slice(&a.as_primitive::<Int64Type>().value(i).to_le_bytes());
        }
        DataType::Timestamp(TimeUnit::Millisecond, _) => {
            buf.push(2);
            buf.extend_from_slice(
                &a.as_primitive::<TimestampMillisecondType>()
                    .value(i)
                    .to_le_bytes(),
            );
        }
        DataType::Float32 => {
            buf.push(3);
            buf.extend_from_slice(&(a.as_primitive::<Float32Type>().value(i) as f64).to_le_bytes());
        }
        DataType::Float64 => {
            buf.push(3);
            buf.extend_from_slice(&a.as_primitive::<Float64Type>().value(i).to_le_bytes());
        }
        DataType::Boolean => {
            buf.push(4);
            buf.push(a.as_boolean().value(i) as u8);
        }
        // Days, and unscaled values at the column's one scale.
        DataType::Date32 | DataType::Decimal128(..) => {
            buf.push(2);
            buf.extend_from_slice(&int_at(a, i)?.to_le_bytes());
        }
        other => return Err(unsupported(other)),
    }
    Ok(())
}

/// A DATE's days or a DECIMAL's unscaled value (at most 18 digits: it fits an i64).
fn int_at(a: &dyn Array, i: usize) -> Result<i64> {
    match a.data_type() {
        DataType::Date32 => Ok(a.as_primitive::<Date32Type>().value(i) as i64),
        DataType::Decimal128(..) => i64::try_from(a.as_primitive::<Decimal128Type>().value(i))
            .map_err(|_| IngestError::Keyed("a DECIMAL value beyond 18 digits".into())),
        other => Err(unsupported(other)),
    }
}

/// The key hash of every row; `cols` are the key columns' arrays.
pub fn key_hashes(cols: &[&ArrayRef], rows: usize) -> Result<Vec<KeyHash>> {
    let mut out = Vec::with_capacity(rows);
    let mut buf = Vec::with_capacity(64);
    for i in 0..rows {
        buf.clear();
        for c in cols {
            key_bytes(c.as_ref(), i, &mut buf)?;
        }
        out.push(super::keymap::hash_key(&buf));
    }
    Ok(out)
}

/// A float's bits mapped so that integer order is float order (total order, NaN last).
fn ordered_f64(f: f64) -> i64 {
    let b = f.to_bits() as i64;
    if b < 0 {
        b ^ i64::MAX
    } else {
        b
    }
}

/// Every row's comparison value as an order-preserving i64 (null: `i64::MIN`, the smallest).
pub fn comparison_values(a: &ArrayRef) -> Result<Vec<i64>> {
    let n = a.len();
    let get = |i: usize| -> Result<i64> {
        if a.is_null(i) {
            return Ok(i64::MIN);
        }
        Ok(match a.data_type() {
            DataType::Int32 => a.as_primitive::<Int32Type>().value(i) as i64,
            DataType::Int64 => a.as_primitive::<Int64Type>().value(i),
            DataType::Timestamp(TimeUnit::Millisecond, _) => {
                a.as_primitive::<TimestampMillisecondType>().value(i)
            }
            DataType::Float32 => ordered_f64(a.as_primitive::<Float32Type>().value(i) as f64),
            DataType::Float64 => ordered_f64(a.as_primitive::<Float64Type>().value(i)),
            DataType::Date32 | DataType::Decimal128(..) => int_at(a.as_ref(), i)?,
            other => return Err(unsupported(other)),
        })
    };
    (0..n).map(get).collect()
}

/// Whether each row is a delete (true; null counts as false).
pub fn delete_flags(a: &ArrayRef) -> Result<Vec<bool>> {
    match a.data_type() {
        DataType::Boolean => {
            let b = a.as_boolean();
            Ok((0..b.len()).map(|i| b.is_valid(i) && b.value(i)).collect())
        }
        other => Err(unsupported(other)),
    }
}

/// One value of a row, for PARTIAL merges.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    /// An array column's values.
    List(Vec<Cell>),
}

impl Cell {
    pub fn is_null(&self) -> bool {
        matches!(self, Cell::Null)
    }
}

/// Row `i` of `batch` as cells.
pub fn row_cells(batch: &RecordBatch, i: usize) -> Result<Vec<Cell>> {
    batch
        .columns()
        .iter()
        .map(|c| cell(c.as_ref(), i))
        .collect()
}

fn cell(a: &dyn Array, i: usize) -> Result<Cell> {
    if a.is_null(i) {
        return Ok(Cell::Null);
    }
    Ok(match a.data_type() {
        DataType::Utf8 | DataType::Dictionary(..) => Cell::Str(str_at(a, i)?.to_string()),
        DataType::Int32 => Cell::Int(a.as_primitive::<Int32Type>().value(i) as i64),
        DataType::Int64 => Cell::Int(a.as_primitive::<Int64Type>().value(i)),
        DataType::Timestamp(TimeUnit::Millisecond, _) => {
            Cell::Int(a.as_primitive::<TimestampMillisecondType>().value(i))
        }
        DataType::Float32 => Cell::Float(a.as_primitive::<Float32Type>().value(i) as f64),
        DataType::Float64 => Cell::Float(a.as_primitive::<Float64Type>().value(i)),
        DataType::Boolean => Cell::Bool(a.as_boolean().value(i)),
        DataType::Date32 | DataType::Decimal128(..) => Cell::Int(int_at(a, i)?),
        DataType::List(_) => {
            let values = a.as_list::<i32>().value(i);
            Cell::List(
                (0..values.len())
                    .map(|j| cell(values.as_ref(), j))
                    .collect::<Result<_>>()?,
            )
        }
        other => return Err(unsupported(other)),
    })
}

/// Rows of cells as a batch of `schema` (the ingest schema: UTF-8 strings).
pub fn cells_to_batch(schema: &SchemaRef, rows: &[Vec<Cell>]) -> Result<RecordBatch> {
    let mut cols: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for (c, f) in schema.fields().iter().enumerate() {
        let vals = rows.iter().map(|r| &r[c]);
        let mismatch =
            || IngestError::Keyed(format!("merged value of {} has the wrong type", f.name()));
        // One builder loop per Arrow type: `$pat` is the cell a value comes from.
        macro_rules! build {
            ($builder:ty, $pat:pat => $v:expr) => {{
                let mut b = <$builder>::new();
                for v in vals {
                    match v {
                        Cell::Null => b.append_null(),
                        $pat => b.append_value($v),
                        _ => return Err(mismatch()),
                    }
                }
                Arc::new(b.finish()) as ArrayRef
            }};
        }
        // The same for an array column: `$pat` is the cell each of a list's values is.
        macro_rules! build_list {
            ($builder:ty, $item:expr, $pat:pat => $v:expr) => {{
                let mut b = ListBuilder::new(<$builder>::new()).with_field($item.clone());
                for v in vals {
                    match v {
                        Cell::Null => b.append(false),
                        Cell::List(items) => {
                            for x in items {
                                match x {
                                    $pat => b.values().append_value($v),
                                    _ => return Err(mismatch()),
                                }
                            }
                            b.append(true);
                        }
                        _ => return Err(mismatch()),
                    }
                }
                Arc::new(b.finish()) as ArrayRef
            }};
        }
        let arr = match f.data_type() {
            DataType::Utf8 => build!(StringBuilder, Cell::Str(s) => s),
            DataType::Int32 => build!(Int32Builder, Cell::Int(x) => *x as i32),
            DataType::Int64 => build!(Int64Builder, Cell::Int(x) => *x),
            DataType::Timestamp(TimeUnit::Millisecond, _) => {
                build!(TimestampMillisecondBuilder, Cell::Int(x) => *x)
            }
            DataType::Float32 => build!(Float32Builder, Cell::Float(x) => *x as f32),
            DataType::Float64 => build!(Float64Builder, Cell::Float(x) => *x),
            DataType::Boolean => build!(BooleanBuilder, Cell::Bool(x) => *x),
            DataType::Date32 => build!(Date32Builder, Cell::Int(x) => *x as i32),
            DataType::Decimal128(p, s) => {
                let a: ArrayRef = build!(Decimal128Builder, Cell::Int(x) => *x as i128);
                Arc::new(
                    a.as_primitive::<Decimal128Type>()
                        .clone()
                        .with_precision_and_scale(*p, *s)?,
                )
            }
            DataType::List(item) if item.data_type() == &DataType::Utf8 => {
                build_list!(StringBuilder, item, Cell::Str(x) => x)
            }
            DataType::List(item) if item.data_type() == &DataType::Int64 => {
                build_list!(Int64Builder, item, Cell::Int(x) => *x)
            }
            other => return Err(unsupported(other)),
        };
        cols.push(arr);
    }
    Ok(RecordBatch::try_new(schema.clone(), cols)?)
}
