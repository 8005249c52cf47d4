//! Decodes request bodies into Arrow record batches that satisfy a table spec. In: NDJSON,
//! CSV (with a header row) or Parquet bytes through `std::io::Read`. Out: batches of at most
//! `batch_rows` rows in the table's ingest schema (strings as Utf8, timestamps in ms).
//!
//! Validation is schema-on-write: a value that does not fit its column is an error naming the
//! line (or row) and the column; missing nullable fields become null; unknown fields are
//! ignored. Timestamps are epoch milliseconds or RFC 3339 strings.

use std::borrow::Cow;
use std::sync::Arc;

use arrow::array::{
    ArrayBuilder, ArrayRef, BooleanBuilder, Date32Builder, Decimal128Builder, Float32Builder,
    Float64Builder, Int32Builder, Int64Builder, ListBuilder, StringBuilder,
    TimestampMillisecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use basalt_segment::{ColumnDef, ColumnType, SegmentSchema};
use serde_json::Value as Json;

use crate::error::{IngestError, Result};
use crate::json_row::{is_text, parse_object, raw_field, ColumnIndex, ObjectError, RawField};

mod formats;
mod parquet_bounds;
mod parquet_pages;
mod parquet_thrift;
pub use formats::{decode_csv, decode_ndjson, decode_parquet, in_parquet_reader, DecodeLimits};
use serde_json::value::RawValue;

/// The body formats `POST /tables/{name}/ingest` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    NdJson,
    Csv,
    Parquet,
}

/// The media type of a Content-Type value: parameters dropped, lower case
/// (`Application/JSON; charset=utf-8` → `application/json`).
pub fn media_type(ct: &str) -> String {
    ct.split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

impl Format {
    /// From a Content-Type header value.
    pub fn from_content_type(ct: &str) -> Result<Format> {
        match media_type(ct).as_str() {
            "application/x-ndjson"
            | "application/ndjson"
            | "application/jsonl"
            | "application/json-seq" => Ok(Format::NdJson),
            "text/csv" => Ok(Format::Csv),
            "application/vnd.apache.parquet" | "application/x-parquet" | "application/parquet" => {
                Ok(Format::Parquet)
            }
            _ => Err(IngestError::UnsupportedFormat(ct.to_string())),
        }
    }

    /// From a file name's extension.
    pub fn from_path(p: &std::path::Path) -> Option<Format> {
        match p.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "ndjson" | "jsonl" | "json" => Some(Format::NdJson),
            "csv" => Some(Format::Csv),
            "parquet" => Some(Format::Parquet),
            _ => None,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::NdJson => "application/x-ndjson",
            Format::Csv => "text/csv",
            Format::Parquet => "application/vnd.apache.parquet",
        }
    }
}

/// The Arrow schema decoded batches have: like the query schema but with plain Utf8 strings.
pub fn ingest_schema(schema: &SegmentSchema) -> SchemaRef {
    Arc::new(Schema::new(
        schema
            .columns
            .iter()
            .map(|c| {
                let t = match c.ty {
                    _ if c.multi_value => c.arrow_type(),
                    ColumnType::String | ColumnType::Json => DataType::Utf8,
                    other => other.arrow_type(),
                };
                Field::new(&c.name, t, c.nullable)
            })
            .collect::<Vec<_>>(),
    ))
}

enum ColBuilder {
    Str(StringBuilder),
    I32(Int32Builder),
    I64(Int64Builder),
    F32(Float32Builder),
    F64(Float64Builder),
    Bool(BooleanBuilder),
    Ts(TimestampMillisecondBuilder),
    Date(Date32Builder),
    Dec(Decimal128Builder),
    StrList(ListBuilder<StringBuilder>),
    I64List(ListBuilder<Int64Builder>),
}

/// A parsed cell (strings borrowed from the input where possible).
enum Cell<'a> {
    Null,
    Str(Cow<'a, str>),
    I64(i64),
    F64(f64),
    Bool(bool),
    /// An array column's values (never null inside).
    StrList(Vec<Cow<'a, str>>),
    I64List(Vec<i64>),
}

impl ColBuilder {
    fn new(def: &ColumnDef, cap: usize) -> Self {
        if def.multi_value {
            return match def.ty {
                ColumnType::Long => ColBuilder::I64List(ListBuilder::new(Int64Builder::new())),
                _ => ColBuilder::StrList(ListBuilder::new(StringBuilder::new())),
            };
        }
        match def.ty {
            ColumnType::String | ColumnType::Json => {
                ColBuilder::Str(StringBuilder::with_capacity(cap, cap * 16))
            }
            ColumnType::Int => ColBuilder::I32(Int32Builder::with_capacity(cap)),
            ColumnType::Long => ColBuilder::I64(Int64Builder::with_capacity(cap)),
            ColumnType::Float => ColBuilder::F32(Float32Builder::with_capacity(cap)),
            ColumnType::Double => ColBuilder::F64(Float64Builder::with_capacity(cap)),
            ColumnType::Boolean => ColBuilder::Bool(BooleanBuilder::with_capacity(cap)),
            ColumnType::Timestamp => {
                ColBuilder::Ts(TimestampMillisecondBuilder::with_capacity(cap))
            }
            ColumnType::Date => ColBuilder::Date(Date32Builder::with_capacity(cap)),
            ColumnType::Decimal { precision, scale } => ColBuilder::Dec(
                Decimal128Builder::with_capacity(cap)
                    .with_precision_and_scale(precision, scale as i8)
                    .expect("a validated DECIMAL type"),
            ),
        }
    }

    fn push(&mut self, c: Cell<'_>) {
        match (self, c) {
            (ColBuilder::Str(b), Cell::Str(s)) => b.append_value(s),
            (ColBuilder::I32(b), Cell::I64(v)) => b.append_value(v as i32),
            (ColBuilder::I64(b), Cell::I64(v)) => b.append_value(v),
            (ColBuilder::Ts(b), Cell::I64(v)) => b.append_value(v),
            (ColBuilder::Date(b), Cell::I64(v)) => b.append_value(v as i32),
            (ColBuilder::Dec(b), Cell::I64(v)) => b.append_value(v as i128),
            (ColBuilder::F32(b), Cell::F64(v)) => b.append_value(v as f32),
            (ColBuilder::F64(b), Cell::F64(v)) => b.append_value(v),
            (ColBuilder::Bool(b), Cell::Bool(v)) => b.append_value(v),
            (ColBuilder::StrList(b), Cell::StrList(v)) => {
                v.iter().for_each(|s| b.values().append_value(s));
                b.append(true);
            }
            (ColBuilder::I64List(b), Cell::I64List(v)) => {
                b.values().append_slice(&v);
                b.append(true);
            }
            (b, _) => b.push_null(),
        }
    }

    fn push_null(&mut self) {
        match self {
            ColBuilder::Str(b) => b.append_null(),
            ColBuilder::I32(b) => b.append_null(),
            ColBuilder::I64(b) => b.append_null(),
            ColBuilder::F32(b) => b.append_null(),
            ColBuilder::F64(b) => b.append_null(),
            ColBuilder::Bool(b) => b.append_null(),
            ColBuilder::Ts(b) => b.append_null(),
            ColBuilder::Date(b) => b.append_null(),
            ColBuilder::Dec(b) => b.append_null(),
            ColBuilder::StrList(b) => b.append(false),
            ColBuilder::I64List(b) => b.append(false),
        }
    }

    fn len(&self) -> usize {
        match self {
            ColBuilder::Str(b) => b.len(),
            ColBuilder::I32(b) => b.len(),
            ColBuilder::I64(b) => b.len(),
            ColBuilder::F32(b) => b.len(),
            ColBuilder::F64(b) => b.len(),
            ColBuilder::Bool(b) => b.len(),
            ColBuilder::Ts(b) => b.len(),
            ColBuilder::Date(b) => b.len(),
            ColBuilder::Dec(b) => b.len(),
            ColBuilder::StrList(b) => b.len(),
            ColBuilder::I64List(b) => b.len(),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            ColBuilder::Str(b) => Arc::new(b.finish()),
            ColBuilder::I32(b) => Arc::new(b.finish()),
            ColBuilder::I64(b) => Arc::new(b.finish()),
            ColBuilder::F32(b) => Arc::new(b.finish()),
            ColBuilder::F64(b) => Arc::new(b.finish()),
            ColBuilder::Bool(b) => Arc::new(b.finish()),
            ColBuilder::Ts(b) => Arc::new(b.finish()),
            ColBuilder::Date(b) => Arc::new(b.finish()),
            ColBuilder::Dec(b) => Arc::new(b.finish()),
            ColBuilder::StrList(b) => Arc::new(b.finish()),
            ColBuilder::I64List(b) => Arc::new(b.finish()),
        }
    }
}

/// Why a JSON object could not become a row.
#[derive(Debug)]
pub enum JsonRowError {
    /// Not a JSON object (or not JSON).
    Object(ObjectError),
    /// A field breaks the spec.
    Row(IngestError),
}

/// Why a FLOAT or DOUBLE value is refused in every format.
pub(crate) const NON_FINITE: &str =
    "NaN and infinities are not accepted (FLOAT and DOUBLE values must be finite numbers)";

/// Accumulates validated rows into batches.
pub struct RowWriter {
    schema: SegmentSchema,
    index: ColumnIndex,
    arrow: SchemaRef,
    builders: Vec<ColBuilder>,
    batch_rows: usize,
    /// A batch is full at this many bytes of values, whatever its row count.
    max_bytes: usize,
    /// Bytes of the values appended since the last batch (strings' lengths, 8 per number).
    bytes: usize,
}

impl RowWriter {
    pub fn new(schema: &SegmentSchema, batch_rows: usize) -> Self {
        RowWriter {
            builders: schema
                .columns
                .iter()
                .map(|c| ColBuilder::new(c, batch_rows.min(65536)))
                .collect(),
            arrow: ingest_schema(schema),
            index: ColumnIndex::new(schema),
            schema: schema.clone(),
            batch_rows: batch_rows.max(1),
            max_bytes: usize::MAX,
            bytes: 0,
        }
    }

    /// Hands a batch on once its values hold `max_bytes`.
    pub fn with_max_bytes(mut self, max_bytes: usize) -> Self {
        self.max_bytes = max_bytes.max(1);
        self
    }

    pub fn rows(&self) -> usize {
        self.builders.first().map(|b| b.len()).unwrap_or(0)
    }

    pub fn is_full(&self) -> bool {
        self.rows() >= self.batch_rows || self.bytes >= self.max_bytes
    }

    /// Hands the accumulated rows to `sink` when the batch is full, or always at the end.
    pub fn flush(
        &mut self,
        sink: &mut dyn FnMut(RecordBatch) -> Result<()>,
        end: bool,
    ) -> Result<()> {
        if end || self.is_full() {
            if let Some(b) = self.finish()? {
                sink(b)?;
            }
        }
        Ok(())
    }

    pub fn finish(&mut self) -> Result<Option<RecordBatch>> {
        if self.rows() == 0 {
            return Ok(None);
        }
        self.bytes = 0;
        let cols = self.builders.iter_mut().map(|b| b.finish()).collect();
        Ok(Some(RecordBatch::try_new(self.arrow.clone(), cols)?))
    }

    /// Validates and appends one JSON object; nothing is appended if any field is bad.
    pub fn push_json(
        &mut self,
        obj: &serde_json::Map<String, Json>,
        location: &dyn Fn() -> String,
    ) -> Result<()> {
        self.push_row(location, |_, c| match obj.get(&c.name) {
            None | Some(Json::Null) => Ok(Cell::Null),
            Some(v) if c.multi_value => json_array_cell(c.ty, v),
            Some(v) => json_cell(c.ty, v),
        })
    }

    /// Parses one JSON object from bytes, validates it and appends it; nothing is appended if
    /// any field is bad. Returns the number of fields the table has no column for.
    pub fn push_json_bytes(
        &mut self,
        bytes: &[u8],
        location: &dyn Fn() -> String,
    ) -> std::result::Result<u64, JsonRowError> {
        let obj = parse_object(bytes, &self.index).map_err(JsonRowError::Object)?;
        self.push_raw_fields(&obj.fields, location)
            .map_err(JsonRowError::Row)?;
        Ok(obj.unknown)
    }

    fn push_raw_fields(
        &mut self,
        fields: &[Option<&RawValue>],
        location: &dyn Fn() -> String,
    ) -> Result<()> {
        self.push_row(location, |i, c| match fields[i] {
            None => Ok(Cell::Null),
            Some(v) if c.multi_value => match raw_field(v)? {
                RawField::Null => Ok(Cell::Null),
                _ => {
                    let json: Json = serde_json::from_str(v.get()).map_err(|e| e.to_string())?;
                    json_array_cell(c.ty, &json)
                }
            },
            Some(v) => raw_cell(c.ty, raw_field(v)?),
        })
    }

    /// Validates and appends one CSV record; `fields[i]` is the record field of column i.
    pub fn push_text(
        &mut self,
        fields: &[Option<&str>],
        location: &dyn Fn() -> String,
    ) -> Result<()> {
        self.push_row(location, |i, c| match fields.get(i).copied().flatten() {
            None => Ok(Cell::Null),
            Some(s)
                if s.is_empty()
                    && (c.multi_value
                        || !matches!(c.ty, ColumnType::String | ColumnType::Json)) =>
            {
                Ok(Cell::Null)
            }
            // A CSV array cell is a JSON array (or one value).
            Some(s) if c.multi_value => match serde_json::from_str::<Json>(s.trim()) {
                Ok(json) => json_array_cell(c.ty, &json),
                Err(_) => json_array_cell(c.ty, &Json::String(s.to_string())),
            },
            Some(s) => text_cell(c.ty, s),
        })
    }

    /// Converts every column with `cell_of`, checks nullability, then appends the row; on any
    /// error nothing is appended and the error names the location and column.
    fn push_row<'c>(
        &mut self,
        location: &dyn Fn() -> String,
        mut cell_of: impl FnMut(usize, &ColumnDef) -> std::result::Result<Cell<'c>, String>,
    ) -> Result<()> {
        let mut cells = Vec::with_capacity(self.schema.columns.len());
        for (i, c) in self.schema.columns.iter().enumerate() {
            let bad = |message: String| IngestError::BadRow {
                location: location(),
                column: c.name.clone(),
                message,
            };
            let cell = cell_of(i, c).map_err(bad)?;
            if matches!(cell, Cell::Null) && !c.nullable {
                return Err(bad("is required but missing or null".into()));
            }
            cells.push(cell);
        }
        for (b, cell) in self.builders.iter_mut().zip(cells) {
            self.bytes += match &cell {
                Cell::Null => 1,
                Cell::Str(s) => s.len() + 4,
                Cell::StrList(v) => v.iter().map(|s| s.len() + 4).sum::<usize>() + 4,
                Cell::I64List(v) => v.len() * 8 + 4,
                _ => 8,
            };
            match cell {
                Cell::Null => b.push_null(),
                c => b.push(c),
            }
        }
        Ok(())
    }
}

/// An array column's cell from JSON: an array of values, or one value taken as a
/// one-element array (as Pinot takes it). Values inside may not be null.
fn json_array_cell(ty: ColumnType, v: &Json) -> std::result::Result<Cell<'static>, String> {
    let items: Vec<&Json> = match v {
        Json::Array(a) => a.iter().collect(),
        other => vec![other],
    };
    let mut strs = Vec::new();
    let mut ints = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        if item.is_null() {
            return Err(format!("array value {i} is null"));
        }
        match json_cell(ty, item)? {
            Cell::Str(s) => strs.push(Cow::Owned(s.into_owned())),
            Cell::I64(x) => ints.push(x),
            _ => return Err(format!("array value {i}: expected {}", ty.name())),
        }
    }
    Ok(match ty {
        ColumnType::Long => Cell::I64List(ints),
        _ => Cell::StrList(strs),
    })
}

fn json_cell(ty: ColumnType, v: &Json) -> std::result::Result<Cell<'_>, String> {
    let describe = |v: &Json| {
        let s = v.to_string();
        if s.len() > 60 {
            format!(
                "{}…",
                &s[..s.char_indices().nth(60).map_or(s.len(), |(i, _)| i)]
            )
        } else {
            s
        }
    };
    match (ty, v) {
        (ColumnType::Json, Json::String(s)) => Ok(Cell::Str(Cow::Borrowed(s))),
        (ColumnType::Json, v) => Ok(Cell::Str(Cow::Owned(v.to_string()))),
        (ColumnType::String, Json::String(s)) => Ok(Cell::Str(Cow::Borrowed(s))),
        (ColumnType::String, Json::Number(n)) => Ok(Cell::Str(Cow::Owned(n.to_string()))),
        (ColumnType::String, Json::Bool(b)) => Ok(Cell::Str(Cow::Owned(b.to_string()))),
        (_, Json::String(s)) => text_cell(ty, s),
        (ColumnType::Int, Json::Number(n)) => n
            .as_i64()
            .and_then(|i| i32::try_from(i).ok())
            .map(|i| Cell::I64(i as i64))
            .ok_or_else(|| format!("expected INT (32-bit integer), got {n}")),
        (ColumnType::Long, Json::Number(n)) => n
            .as_i64()
            .map(Cell::I64)
            .ok_or_else(|| format!("expected LONG (64-bit integer), got {n}")),
        (ColumnType::Timestamp, Json::Number(n)) => n
            .as_i64()
            .map(Cell::I64)
            .ok_or_else(|| format!("expected TIMESTAMP (epoch milliseconds or RFC 3339), got {n}")),
        (ColumnType::Float | ColumnType::Double, Json::Number(n)) => n
            .as_f64()
            .filter(|v| finite_in(ty, *v))
            .map(Cell::F64)
            .ok_or_else(|| format!("expected {}, got {n}", ty.name())),
        (ColumnType::Decimal { .. }, Json::Number(n)) => decimal_cell(ty, &n.to_string()),
        (ColumnType::Boolean, Json::Bool(b)) => Ok(Cell::Bool(*b)),
        (ty, v) => Err(format!("expected {}, got {}", ty.name(), describe(v))),
    }
}

fn text_cell(ty: ColumnType, s: &str) -> std::result::Result<Cell<'_>, String> {
    let short = || {
        if s.len() > 60 {
            format!(
                "{:?}…",
                &s[..s.char_indices().nth(60).map_or(s.len(), |(i, _)| i)]
            )
        } else {
            format!("{s:?}")
        }
    };
    match ty {
        ColumnType::String | ColumnType::Json => Ok(Cell::Str(Cow::Borrowed(s))),
        ColumnType::Int => s
            .trim()
            .parse::<i32>()
            .map(|v| Cell::I64(v as i64))
            .map_err(|_| format!("expected INT (32-bit integer), got {}", short())),
        ColumnType::Long => s
            .trim()
            .parse::<i64>()
            .map(Cell::I64)
            .map_err(|_| format!("expected LONG (64-bit integer), got {}", short())),
        ColumnType::Float | ColumnType::Double => match s.trim().parse::<f64>() {
            Ok(v) if finite_in(ty, v) => Ok(Cell::F64(v)),
            Ok(_) => Err(format!("got {}: {NON_FINITE}", short())),
            Err(_) => Err(format!("expected {}, got {}", ty.name(), short())),
        },
        ColumnType::Boolean => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" => Ok(Cell::Bool(true)),
            "false" | "0" => Ok(Cell::Bool(false)),
            _ => Err(format!("expected BOOLEAN (true/false), got {}", short())),
        },
        ColumnType::Timestamp => parse_timestamp(s.trim()).map(Cell::I64).ok_or_else(|| {
            format!(
                "expected TIMESTAMP (epoch milliseconds or RFC 3339), got {}",
                short()
            )
        }),
        ColumnType::Date => parse_date(s.trim())
            .map(|d| Cell::I64(d as i64))
            .ok_or_else(|| format!("expected DATE (YYYY-MM-DD), got {}", short())),
        ColumnType::Decimal { .. } => decimal_cell(ty, s),
    }
}

/// A cell from a field's raw JSON text, with the conversions and messages of [`json_cell`].
fn raw_cell<'a>(ty: ColumnType, f: RawField<'a>) -> std::result::Result<Cell<'a>, String> {
    let short = |t: &str| {
        if t.len() > 60 {
            format!(
                "{}…",
                &t[..t.char_indices().nth(60).map_or(t.len(), |(i, _)| i)]
            )
        } else {
            t.to_string()
        }
    };
    match (ty, f) {
        (_, RawField::Null) => Ok(Cell::Null),
        (t, RawField::Str(s)) if is_text(t) => Ok(Cell::Str(s)),
        (_, RawField::Str(s)) => text_cell(ty, &s).map(|c| match c {
            Cell::Str(x) => Cell::Str(Cow::Owned(x.into_owned())),
            Cell::Null => Cell::Null,
            Cell::I64(v) => Cell::I64(v),
            Cell::F64(v) => Cell::F64(v),
            Cell::Bool(v) => Cell::Bool(v),
            Cell::StrList(v) => {
                Cell::StrList(v.into_iter().map(|s| Cow::Owned(s.into_owned())).collect())
            }
            Cell::I64List(v) => Cell::I64List(v),
        }),
        (t, RawField::Number(n)) if is_text(t) => Ok(Cell::Str(Cow::Borrowed(n))),
        (t, RawField::Bool(b)) if is_text(t) => {
            Ok(Cell::Str(Cow::Borrowed(if b { "true" } else { "false" })))
        }
        (ColumnType::Json, RawField::Nested(t)) => Ok(Cell::Str(Cow::Borrowed(t))),
        (ColumnType::Int, RawField::Number(n)) => n
            .parse::<i32>()
            .map(|i| Cell::I64(i as i64))
            .map_err(|_| format!("expected INT (32-bit integer), got {n}")),
        (ColumnType::Long, RawField::Number(n)) => n
            .parse::<i64>()
            .map(Cell::I64)
            .map_err(|_| format!("expected LONG (64-bit integer), got {n}")),
        (ColumnType::Timestamp, RawField::Number(n)) => n
            .parse::<i64>()
            .map(Cell::I64)
            .map_err(|_| format!("expected TIMESTAMP (epoch milliseconds or RFC 3339), got {n}")),
        (ColumnType::Float | ColumnType::Double, RawField::Number(n)) => n
            .parse::<f64>()
            .ok()
            .filter(|v| finite_in(ty, *v))
            .map(Cell::F64)
            .ok_or_else(|| format!("expected {}, got {n}", ty.name())),
        (ColumnType::Decimal { .. }, RawField::Number(n)) => decimal_cell(ty, n),
        (ColumnType::Boolean, RawField::Bool(b)) => Ok(Cell::Bool(b)),
        (ty, RawField::Bool(b)) => Err(format!("expected {}, got {b}", ty.name())),
        (ty, RawField::Number(t) | RawField::Nested(t)) => {
            Err(format!("expected {}, got {}", ty.name(), short(t)))
        }
    }
}

/// Whether `v` is finite as a value of `ty` (a FLOAT overflows to infinity beyond f32).
fn finite_in(ty: ColumnType, v: f64) -> bool {
    match ty {
        ColumnType::Float => (v as f32).is_finite(),
        _ => v.is_finite(),
    }
}

/// A DECIMAL cell from its text (a JSON number as written, a string, a CSV field).
fn decimal_cell(ty: ColumnType, text: &str) -> std::result::Result<Cell<'static>, String> {
    let ColumnType::Decimal { precision, scale } = ty else {
        return Err(format!("expected {ty}, got a decimal number"));
    };
    basalt_segment::decimal::parse_decimal(text, precision, scale)
        .map(Cell::I64)
        .map_err(|e| format!("expected {ty}: {e}"))
}

/// Days since 1970-01-01 of a `YYYY-MM-DD` date.
pub fn parse_date(s: &str) -> Option<i32> {
    let d = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()?;
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1)?;
    i32::try_from(d.signed_duration_since(epoch).num_days()).ok()
}

/// Epoch milliseconds from digits, RFC 3339, or `YYYY-MM-DD HH:MM:SS[.fff]` (UTC).
pub fn parse_timestamp(s: &str) -> Option<i64> {
    if let Ok(ms) = s.parse::<i64>() {
        return Some(ms);
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp_millis());
    }
    for fmt in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s, fmt) {
            return Some(t.and_utc().timestamp_millis());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use basalt_segment::ColumnDef;

    fn schema() -> SegmentSchema {
        let mut ts = ColumnDef::new("ts", ColumnType::Timestamp);
        ts.nullable = false;
        SegmentSchema {
            columns: vec![
                ts,
                ColumnDef::new("s", ColumnType::String),
                ColumnDef::new("n", ColumnType::Int),
                ColumnDef::new("d", ColumnType::Double),
                ColumnDef::new("b", ColumnType::Boolean),
                ColumnDef::new("j", ColumnType::Json),
            ],
            time_column: Some("ts".into()),
            star_trees: Vec::new(),
        }
    }

    fn ndjson(body: &str) -> Result<Vec<RecordBatch>> {
        let mut out = Vec::new();
        decode_ndjson(
            body.as_bytes(),
            &schema(),
            2,
            &Default::default(),
            &mut |b| {
                out.push(b);
                Ok(())
            },
        )?;
        Ok(out)
    }

    /// Writes `batch` as a Parquet file into `file`.
    /// The bytes written to `file` so far.
    fn file_bytes(file: &std::fs::File) -> bytes::Bytes {
        use std::io::{Read, Seek};
        let mut f = file.try_clone().unwrap();
        f.rewind().unwrap();
        let mut out = Vec::new();
        f.read_to_end(&mut out).unwrap();
        out.into()
    }

    fn write_parquet(file: &std::fs::File, batch: &RecordBatch) {
        let mut w =
            parquet::arrow::ArrowWriter::try_new(file.try_clone().unwrap(), batch.schema(), None)
                .unwrap();
        w.write(batch).unwrap();
        w.close().unwrap();
    }

    #[test]
    fn ndjson_rows_and_nulls() {
        let b = ndjson(
            "{\"ts\":1700000000000,\"s\":\"a\",\"n\":3,\"d\":1.5,\"b\":true,\"j\":{\"k\":1},\"extra\":1}\n\n{\"ts\":\"2023-11-14T22:13:20Z\"}\n{\"ts\":\"2023-11-14T22:13:20.5+01:00\",\"n\":\"7\"}\n",
        )
        .unwrap();
        assert_eq!(b.iter().map(|b| b.num_rows()).sum::<usize>(), 3);
        let first = &b[0];
        assert_eq!(first.column(1).null_count(), 1);
        let ts = first
            .column(0)
            .as_any()
            .downcast_ref::<arrow::array::TimestampMillisecondArray>()
            .unwrap();
        assert_eq!(ts.value(1), 1_700_000_000_000);
    }

    #[test]
    fn ndjson_errors_name_line_and_column() {
        let e = ndjson("{\"ts\":1}\n{\"ts\":1,\"n\":\"x\"}\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 2") && e.contains("\"n\"") && e.contains("INT"),
            "{e}"
        );
        let e = ndjson("{\"ts\":1}\n{\"s\":\"a\"}\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 2") && e.contains("\"ts\"") && e.contains("required"),
            "{e}"
        );
        let e = ndjson("{\"ts\":1}\nnot json\n").unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("invalid JSON"), "{e}");
        let e = ndjson("{\"ts\":1,\"n\":4294967296}\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 1") && e.contains("32-bit"), "{e}");
        let e = ndjson("{\"ts\":\"yesterday\"}\n").unwrap_err().to_string();
        assert!(e.contains("TIMESTAMP"), "{e}");
    }

    #[test]
    fn csv_rows_and_errors() {
        let mut n = 0;
        let rows = decode_csv(
            "s,ts,n\nhello,1700000000000,5\n,2023-11-14T22:13:20Z,\n".as_bytes(),
            &schema(),
            10,
            &Default::default(),
            &mut |b| {
                n += b.num_rows();
                Ok(())
            },
        )
        .unwrap();
        assert_eq!((rows, n), (2, 2));
        let e = decode_csv(
            "ts,n\n1,2\n3,abc\n".as_bytes(),
            &schema(),
            10,
            &Default::default(),
            &mut |_| Ok(()),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("line 3") && e.contains("\"n\""), "{e}");
    }

    #[test]
    fn long_lines_and_records_are_refused_before_they_are_buffered() {
        let limits = DecodeLimits {
            max_line_bytes: 64,
            max_batch_bytes: 1 << 20,
            ..DecodeLimits::default()
        };
        let ok = format!("{{\"ts\":1,\"s\":\"{}\"}}\n", "x".repeat(40));
        let long = format!("{{\"ts\":1,\"s\":\"{}\"}}\n", "x".repeat(100));
        let run =
            |body: String| decode_ndjson(body.as_bytes(), &schema(), 10, &limits, &mut |_| Ok(()));
        assert_eq!(run(ok.repeat(3)).unwrap(), 3);
        let e = run(format!("{ok}{long}")).unwrap_err().to_string();
        assert!(
            e.contains("line 2") && e.contains("ingest.max_line_bytes"),
            "{e}"
        );
        // A line with no newline at all (a body that is one huge line).
        let e = run("x".repeat(10_000)).unwrap_err().to_string();
        assert!(e.contains("line 1"), "{e}");
        let csv = |body: &str| decode_csv(body.as_bytes(), &schema(), 10, &limits, &mut |_| Ok(()));
        assert_eq!(csv("ts,s\n1,\"a\nb\"\n2,c\n").unwrap(), 2);
        let e = csv(&format!("ts,s\n1,{}\n", "y".repeat(100)))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 2") && e.contains("ingest.max_line_bytes"),
            "{e}"
        );
        // Newlines inside quotes do not end a record: a quoted field cannot grow unbounded.
        let quoted = format!("ts,s\n1,\"{}\"\n", "z\n".repeat(50));
        assert!(csv(&quoted).is_err());
    }

    #[test]
    fn batches_are_bounded_by_bytes() {
        let limits = DecodeLimits {
            max_line_bytes: 1 << 20,
            max_batch_bytes: 1000,
            ..DecodeLimits::default()
        };
        let line = format!("{{\"ts\":1,\"s\":\"{}\"}}\n", "x".repeat(300));
        let mut batches = Vec::new();
        decode_ndjson(
            line.repeat(10).as_bytes(),
            &schema(),
            1000,
            &limits,
            &mut |b| {
                batches.push(b.num_rows());
                Ok(())
            },
        )
        .unwrap();
        assert!(
            batches.len() >= 3 && batches.iter().all(|&n| n <= 4),
            "{batches:?}"
        );
        assert_eq!(batches.iter().sum::<usize>(), 10);
    }

    #[test]
    fn nan_and_infinity_are_refused_in_every_format() {
        for v in ["\"NaN\"", "\"inf\"", "\"-Infinity\"", "1e400"] {
            let e = ndjson(&format!("{{\"ts\":1,\"d\":{v}}}\n"))
                .expect_err(v)
                .to_string();
            assert!(e.contains("\"d\""), "{v}: {e}");
        }
        for v in ["NaN", "inf", "-infinity", "1e400"] {
            let e = decode_csv(
                format!("ts,d\n1,{v}\n").as_bytes(),
                &schema(),
                10,
                &Default::default(),
                &mut |_| Ok(()),
            )
            .expect_err(v)
            .to_string();
            assert!(e.contains("\"d\"") && e.contains("line 2"), "{v}: {e}");
        }
        // Parquet: a file holding NaN.
        let file = tempfile::tempfile().unwrap();
        let arrow_schema = Arc::new(Schema::new(vec![
            Field::new("ts", DataType::Int64, false),
            Field::new("d", DataType::Float64, true),
        ]));
        let batch = RecordBatch::try_new(
            arrow_schema,
            vec![
                Arc::new(arrow::array::Int64Array::from(vec![1, 2])),
                Arc::new(arrow::array::Float64Array::from(vec![1.5, f64::NAN])),
            ],
        )
        .unwrap();
        write_parquet(&file, &batch);
        let e = decode_parquet(
            file_bytes(&file),
            &schema(),
            10,
            true,
            &Default::default(),
            &mut |_| Ok(()),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("row 2") && e.contains("\"d\"") && e.contains("NaN"),
            "{e}"
        );
    }

    /// DATE and DECIMAL columns from NDJSON, CSV and Parquet: the same days and exact
    /// unscaled values (rounded half away from zero to the column's scale), and errors that
    /// name the row, the column and the type.
    #[test]
    fn dates_and_decimals_from_every_format() {
        use arrow::array::{Date32Array, Decimal128Array};
        let schema = SegmentSchema {
            columns: vec![
                ColumnDef::new("day", ColumnType::Date),
                ColumnDef::new("p", ColumnType::decimal(9, 2)),
            ],
            time_column: None,
            star_trees: Vec::new(),
        };
        let collect =
            |r: Result<usize>, out: Vec<RecordBatch>| -> (Vec<Option<i32>>, Vec<Option<i128>>) {
                r.unwrap();
                let mut days = Vec::new();
                let mut ps = Vec::new();
                for b in out {
                    let d = b.column(0).as_any().downcast_ref::<Date32Array>().unwrap();
                    let p = b
                        .column(1)
                        .as_any()
                        .downcast_ref::<Decimal128Array>()
                        .unwrap();
                    assert_eq!(p.precision(), 9);
                    assert_eq!(p.scale(), 2);
                    days.extend(d.iter());
                    ps.extend(p.iter());
                }
                (days, ps)
            };
        let want_days = vec![Some(20_455), Some(0), None];
        let want_ps = vec![Some(1235), Some(-100_000), Some(5)];

        type Decoder = fn(
            &[u8],
            &SegmentSchema,
            usize,
            &DecodeLimits,
            &mut dyn FnMut(RecordBatch) -> Result<()>,
        ) -> Result<usize>;
        let texts: [(Decoder, &str); 2] = [
            (
                |b, s, n, l, sink| decode_ndjson(b, s, n, l, sink),
                "{\"day\":\"2026-01-02\",\"p\":12.345}\n{\"day\":\"1970-01-01\",\"p\":\"-1e3\"}\n{\"p\":0.045}\n",
            ),
            (
                |b, s, n, l, sink| decode_csv(b, s, n, l, sink),
                "day,p\n2026-01-02,12.345\n1970-01-01,-1000\n,.045\n",
            ),
        ];
        for (decode, body) in texts {
            let mut out = Vec::new();
            let r = decode(body.as_bytes(), &schema, 2, &Default::default(), &mut |b| {
                out.push(b);
                Ok(())
            });
            assert_eq!(collect(r, out), (want_days.clone(), want_ps.clone()));
        }

        // Parquet: a timestamp keeps its day; a DECIMAL(10, 3) is rounded to two places.
        let file = tempfile::tempfile().unwrap();
        let arrow_schema = Arc::new(Schema::new(vec![
            Field::new(
                "day",
                DataType::Timestamp(arrow::datatypes::TimeUnit::Millisecond, None),
                true,
            ),
            Field::new("p", DataType::Decimal128(10, 3), true),
        ]));
        let batch = RecordBatch::try_new(
            arrow_schema,
            vec![
                Arc::new(arrow::array::TimestampMillisecondArray::from(vec![
                    Some(20_455 * 86_400_000 + 3_600_000),
                    Some(0),
                    None,
                ])),
                Arc::new(
                    Decimal128Array::from(vec![Some(12_345), Some(-1_000_000), Some(45)])
                        .with_precision_and_scale(10, 3)
                        .unwrap(),
                ),
            ],
        )
        .unwrap();
        write_parquet(&file, &batch);
        let mut out = Vec::new();
        let r = decode_parquet(
            file_bytes(&file),
            &schema,
            10,
            true,
            &Default::default(),
            &mut |b| {
                out.push(b);
                Ok(())
            },
        );
        assert_eq!(collect(r, out), (want_days, want_ps));

        // Errors name the line, the column and the type.
        for (body, what) in [
            ("{\"p\":12345678.9}", "does not fit DECIMAL(9, 2)"),
            ("{\"p\":\"twelve\"}", "not a decimal number"),
            ("{\"day\":\"2026-13-01\"}", "DATE (YYYY-MM-DD)"),
            ("{\"day\":20455}", "DATE"),
        ] {
            let e = decode_ndjson(
                format!("{{}}\n{body}\n").as_bytes(),
                &schema,
                2,
                &Default::default(),
                &mut |_| Ok(()),
            )
            .unwrap_err()
            .to_string();
            assert!(e.contains("line 2") && e.contains(what), "{body}: {e}");
        }
    }

    /// Parquet string columns whose every page is dictionary-encoded arrive as the file's
    /// dictionaries (only when asked, and only columns the builder encodes from them); a
    /// column whose writer fell back to plain pages, an indexed-for-text column and every
    /// column of a request that did not ask arrive as plain strings. Either way the segment
    /// built from the batches is the same, byte for byte.
    #[test]
    fn parquet_dictionary_pages_reach_the_builder_as_dictionaries() {
        use basalt_segment::{build_segment, string_dictionary_type, IndexKind};
        let schema = SegmentSchema {
            columns: vec![
                ColumnDef::new("ts", ColumnType::Timestamp),
                ColumnDef::new("country", ColumnType::String).with_index(IndexKind::Inverted),
                ColumnDef::new("os", ColumnType::String),
                ColumnDef::new("id", ColumnType::String),
                ColumnDef::new("msg", ColumnType::String).with_index(IndexKind::Text),
            ],
            time_column: Some("ts".into()),
            star_trees: Vec::new(),
        };
        let n = 5000usize;
        let arrow_schema = Arc::new(Schema::new(vec![
            Field::new("ts", DataType::Int64, false),
            Field::new("country", DataType::Utf8, true),
            Field::new("os", DataType::Utf8, true),
            Field::new("id", DataType::Utf8, true),
            Field::new("msg", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            arrow_schema,
            vec![
                Arc::new(arrow::array::Int64Array::from_iter_values(0..n as i64)),
                Arc::new(arrow::array::StringArray::from_iter((0..n).map(|i| {
                    (i % 11 != 0).then(|| ["DE", "US", "FR", "BR"][(i * 7) % 4])
                }))),
                Arc::new(arrow::array::StringArray::from_iter_values(
                    (0..n).map(|i| ["linux", "ios", "android"][i % 3]),
                )),
                // Unique ids overflow a small dictionary page: the writer falls back.
                Arc::new(arrow::array::StringArray::from_iter_values(
                    (0..n).map(|i| format!("id-{:08}", i * 7919 % n)),
                )),
                Arc::new(arrow::array::StringArray::from_iter_values(
                    (0..n).map(|i| ["a b", "c d"][i % 2]),
                )),
            ],
        )
        .unwrap();
        let file = tempfile::tempfile().unwrap();
        let props = parquet::file::properties::WriterProperties::builder()
            .set_dictionary_page_size_limit(4096)
            .set_max_row_group_row_count(Some(2048))
            .build();
        let mut w = parquet::arrow::ArrowWriter::try_new(
            file.try_clone().unwrap(),
            batch.schema(),
            Some(props),
        )
        .unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        let decode_with = |keep: bool, rows: usize| {
            let mut out = Vec::new();
            decode_parquet(
                file_bytes(&file),
                &schema,
                rows,
                keep,
                &Default::default(),
                &mut |b| {
                    out.push(b);
                    Ok(())
                },
            )
            .unwrap();
            out
        };
        let decode = |keep: bool| decode_with(keep, 1000);
        let (plain, dict) = (decode(false), decode(true));
        // Batches never span row groups (2048 rows each).
        let sizes = |b: &[RecordBatch]| b.iter().map(|b| b.num_rows()).collect::<Vec<_>>();
        assert_eq!(sizes(&dict), [1000, 1000, 48, 1000, 1000, 48, 904]);
        let per_group = decode_with(true, 4096);
        assert_eq!(sizes(&per_group), [2048, 2048, 904]);
        let types = |b: &[RecordBatch]| -> Vec<DataType> {
            b[0].columns()
                .iter()
                .map(|c| c.data_type().clone())
                .collect()
        };
        let d = string_dictionary_type();
        assert_eq!(
            types(&dict),
            vec![
                DataType::Timestamp(arrow::datatypes::TimeUnit::Millisecond, None),
                d.clone(),
                d,
                DataType::Utf8,
                DataType::Utf8
            ]
        );
        assert!(types(&plain)[1..].iter().all(|t| t == &DataType::Utf8));
        assert_eq!(dict.iter().map(|b| b.num_rows()).sum::<usize>(), n);
        let opts = Default::default();
        assert!(
            build_segment(&schema, &plain, &opts).unwrap()
                == build_segment(&schema, &dict, &opts).unwrap(),
            "the same segment from either form"
        );
        assert!(
            build_segment(&schema, &per_group, &opts).unwrap()
                == build_segment(&schema, &dict, &opts).unwrap(),
            "the same segment from a batch per row group"
        );
    }

    /// The decoder's error for a Parquet fixture, with the every-type schema.
    fn fixture_error(file: &'static [u8]) -> IngestError {
        let schema = basalt_segment::fuzzing::every_type_schema();
        decode_parquet(
            bytes::Bytes::from_static(file),
            &schema,
            64,
            true,
            &Default::default(),
            &mut |_| Ok(()),
        )
        .unwrap_err()
    }

    /// A file the `parquet` fuzz target found: a dictionary-encoded page whose dictionary
    /// page is missing makes the Parquet reader panic; the decoder answers an error.
    #[test]
    fn a_parquet_file_that_panics_the_reader_is_an_error() {
        let e = fixture_error(include_bytes!("fixtures/dictionary_page_missing.parquet"));
        assert!(
            matches!(&e, IngestError::BadInput { message, .. } if message.contains("malformed")),
            "{e}"
        );
    }

    /// A file the `parquet` fuzz target found: 7.5 KB whose footer declares a list of schema
    /// elements the `parquet` crate reserved 180 GB for before reading one (an allocation
    /// failure aborts the process). The footer is checked first; the decoder answers an error.
    #[test]
    fn a_parquet_footer_declaring_a_huge_list_is_an_error() {
        let e = fixture_error(include_bytes!("fixtures/footer_list_bomb.parquet"));
        assert!(
            matches!(&e, IngestError::BadInput { location, message }
                if location.contains("footer") && message.contains("malformed")),
            "{e}"
        );
    }

    /// A second file the `parquet` fuzz target found (6.9 KB). A footer field whose id the
    /// `parquet` crate reads as a list carries another wire type: the crate dispatches on the
    /// id alone and reserved 5.8 GB for a list a check following the wire types never saw.
    /// The footer check holds every field the crate knows to the type it reads.
    #[test]
    fn a_parquet_footer_field_of_another_type_is_an_error() {
        let e = fixture_error(include_bytes!("fixtures/footer_field_type_bomb.parquet"));
        assert!(
            matches!(&e, IngestError::BadInput { location, .. } if location.contains("footer")),
            "{e}"
        );
    }

    proptest::proptest! {
        /// The borrowed parse of raw bytes accepts and converts exactly what the
        /// `serde_json::Value` path does, with the same rows and the same error locations.
        #[test]
        fn raw_bytes_and_value_paths_agree(
            picks in proptest::collection::vec((0usize..8, 0usize..24), 0..10)
        ) {
            const KEYS: [&str; 8] = ["ts", "s", "n", "l", "d", "b", "j", "extra"];
            const VALUES: [&str; 24] = [
                "1", "-7", "2147483648", "1.5", "-0.25", "1e3", "true", "false", "null",
                "\"x\"", "\"h\\u00e9\\\"q\"", "\"12\"", "\"2026-11-28T12:00:00Z\"",
                "\"true\"", "\"abc\"", "[1,2]", "{\"k\":[true,null]}", "[]", "{}",
                "9223372036854775807", "18446744073709551616", "\"\"", "0", "\"1.25\"",
            ];
            let schema = SegmentSchema {
                columns: vec![
                    ColumnDef::new("ts", ColumnType::Timestamp),
                    ColumnDef::new("s", ColumnType::String),
                    ColumnDef::new("n", ColumnType::Int),
                    ColumnDef::new("l", ColumnType::Long),
                    ColumnDef::new("d", ColumnType::Double),
                    ColumnDef::new("b", ColumnType::Boolean),
                    ColumnDef::new("j", ColumnType::Json),
                ],
                time_column: None, star_trees: Vec::new(), };
            let body = format!(
                "{{{}}}",
                picks
                    .iter()
                    .map(|&(k, v)| format!("\"{}\":{}", KEYS[k], VALUES[v]))
                    .collect::<Vec<_>>()
                    .join(",")
            );
            let loc = || "here".to_string();
            let mut by_value = RowWriter::new(&schema, 8);
            let obj: serde_json::Map<String, Json> = serde_json::from_str(&body).unwrap();
            let a = by_value.push_json(&obj, &loc).map_err(|e| e.to_string());
            let mut by_bytes = RowWriter::new(&schema, 8);
            let b = by_bytes.push_json_bytes(body.as_bytes(), &loc).map(|_| ()).map_err(|e| match e {
                JsonRowError::Row(e) => e.to_string(),
                JsonRowError::Object(o) => format!("{o:?}"),
            });
            // Numbers serde_json re-renders are the one difference: a STRING or JSON column
            // keeps the text as written ("1e3", "18446744073709551616") where serde_json
            // renders it ("1000.0", "1.8446744073709552e19").
            let exp_in_string = picks.iter().any(|&(k, v)| {
                (k == 1 || k == 6) && ["1e3", "18446744073709551616"].contains(&VALUES[v])
            });
            // Error messages show numbers as written rather than as serde_json renders them;
            // the location and column must agree.
            let column = |r: &std::result::Result<(), String>| {
                r.clone().map_err(|e| e.split(": expected").next().unwrap_or("").to_string())
            };
            if !exp_in_string {
                proptest::prop_assert_eq!(column(&a), column(&b), "{}", body);
                if a.is_ok() {
                    let x = by_value.finish().unwrap().unwrap();
                    let y = by_bytes.finish().unwrap().unwrap();
                    proptest::prop_assert_eq!(x, y, "{}", body);
                }
            }
        }
    }
}
