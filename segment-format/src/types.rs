//! Logical column types, index kinds and literal values shared by the builder, the reader and
//! the predicate evaluator. In: nothing. Out: the vocabulary of the segment schema.
//!
//! Every logical type maps to one physical kind that decides how values are stored:
//! INT/LONG/TIMESTAMP/DATE/DECIMAL → i64, FLOAT/DOUBLE → f64, BOOLEAN → bool, STRING/JSON →
//! UTF-8 bytes. A DATE is stored as days since 1970-01-01; a `DECIMAL(p, s)` as its unscaled
//! integer (the value times 10^s), so sums are exact and keys keep the values' order.

use std::fmt;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Milliseconds in a day: a DATE's unit in a TIMESTAMP's.
pub const DAY_MS: i64 = 86_400_000;

/// The widest DECIMAL a segment stores: unscaled values are 64-bit integers.
pub const MAX_DECIMAL_PRECISION: u8 = 18;

/// A column's logical type, as written in a table spec (`"STRING"`, `"DECIMAL(15, 2)"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ColumnType {
    String,
    Int,
    Long,
    Float,
    Double,
    Boolean,
    /// Milliseconds since the Unix epoch, UTC.
    Timestamp,
    /// Kept as a string for now.
    Json,
    /// A calendar day: days since 1970-01-01 (Arrow `Date32`, PostgreSQL `date`).
    Date,
    /// An exact number of `precision` digits, `scale` of them after the point (Arrow
    /// `Decimal128`, PostgreSQL `numeric`); `1 <= precision <= 18`, `scale <= precision`.
    Decimal {
        precision: u8,
        scale: u8,
    },
}

impl fmt::Display for ColumnType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ColumnType::Decimal { precision, scale } => write!(f, "DECIMAL({precision}, {scale})"),
            other => f.write_str(other.keyword()),
        }
    }
}

impl Serialize for ColumnType {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ColumnType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = std::borrow::Cow::<str>::deserialize(d)?;
        ColumnType::parse_checked(&s).map_err(serde::de::Error::custom)
    }
}

/// How values of a type are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Physical {
    I64,
    F64,
    Bool,
    Str,
}

impl ColumnType {
    /// One of each type (DECIMAL with one precision and scale), for tests and fuzzing.
    pub const ALL: [ColumnType; 10] = [
        ColumnType::String,
        ColumnType::Int,
        ColumnType::Long,
        ColumnType::Float,
        ColumnType::Double,
        ColumnType::Boolean,
        ColumnType::Timestamp,
        ColumnType::Json,
        ColumnType::Date,
        ColumnType::Decimal {
            precision: 15,
            scale: 2,
        },
    ];

    /// `DECIMAL(precision, scale)`, not validated (specs go through [`ColumnType::parse`]).
    pub const fn decimal(precision: u8, scale: u8) -> ColumnType {
        ColumnType::Decimal { precision, scale }
    }

    pub fn physical(self) -> Physical {
        match self {
            ColumnType::Int
            | ColumnType::Long
            | ColumnType::Timestamp
            | ColumnType::Date
            | ColumnType::Decimal { .. } => Physical::I64,
            ColumnType::Float | ColumnType::Double => Physical::F64,
            ColumnType::Boolean => Physical::Bool,
            ColumnType::String | ColumnType::Json => Physical::Str,
        }
    }

    /// The Arrow type the reader produces for this column.
    pub fn arrow_type(self) -> DataType {
        match self {
            ColumnType::Int => DataType::Int32,
            ColumnType::Long => DataType::Int64,
            ColumnType::Timestamp => DataType::Timestamp(TimeUnit::Millisecond, None),
            ColumnType::Float => DataType::Float32,
            ColumnType::Double => DataType::Float64,
            ColumnType::Boolean => DataType::Boolean,
            ColumnType::String | ColumnType::Json => {
                DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
            }
            ColumnType::Date => DataType::Date32,
            ColumnType::Decimal { precision, scale } => {
                DataType::Decimal128(precision, scale as i8)
            }
        }
    }

    /// The name a spec uses for this type (`DECIMAL(15, 2)` with its precision and scale).
    pub fn name(self) -> String {
        self.to_string()
    }

    /// The keyword of the type (`DECIMAL` without precision and scale).
    fn keyword(self) -> &'static str {
        match self {
            ColumnType::String => "STRING",
            ColumnType::Int => "INT",
            ColumnType::Long => "LONG",
            ColumnType::Float => "FLOAT",
            ColumnType::Double => "DOUBLE",
            ColumnType::Boolean => "BOOLEAN",
            ColumnType::Timestamp => "TIMESTAMP",
            ColumnType::Json => "JSON",
            ColumnType::Date => "DATE",
            ColumnType::Decimal { .. } => "DECIMAL",
        }
    }

    pub fn parse(s: &str) -> Option<ColumnType> {
        ColumnType::parse_checked(s).ok()
    }

    /// Parses a type name, case-insensitively: a keyword, or `DECIMAL(p, s)` / `DECIMAL(p)`
    /// (`NUMERIC` is a synonym); the error says what is wrong with it.
    pub fn parse_checked(s: &str) -> std::result::Result<ColumnType, String> {
        let t = s.trim();
        let upper = t.to_ascii_uppercase();
        let args = ["DECIMAL", "NUMERIC"]
            .iter()
            .find_map(|k| upper.strip_prefix(k))
            .map(str::trim_start);
        if let Some(args) = args.filter(|a| a.starts_with('(')) {
            return parse_decimal_args(args).ok_or_else(|| {
                format!(
                    "bad DECIMAL type {t:?}: write DECIMAL(precision, scale) with \
                     1 <= precision <= {MAX_DECIMAL_PRECISION} and 0 <= scale <= precision"
                )
            });
        }
        if matches!(upper.as_str(), "DECIMAL" | "NUMERIC") {
            return Err(format!(
                "{t:?} needs a precision and scale: DECIMAL(precision, scale), precision at \
                 most {MAX_DECIMAL_PRECISION}"
            ));
        }
        ColumnType::ALL
            .into_iter()
            .find(|c| c.keyword().eq_ignore_ascii_case(t))
            .ok_or_else(|| {
                format!(
                    "unknown column type {t:?}; known types: STRING, INT, LONG, FLOAT, DOUBLE, \
                     BOOLEAN, TIMESTAMP, DATE, DECIMAL(p, s), JSON"
                )
            })
    }
}

/// `(p, s)` or `(p)` after DECIMAL, validated.
fn parse_decimal_args(args: &str) -> Option<ColumnType> {
    let inner = args.strip_prefix('(')?.strip_suffix(')')?;
    let mut parts = inner.split(',').map(str::trim);
    let precision: u8 = parts.next()?.parse().ok()?;
    let scale: u8 = match parts.next() {
        Some(s) => s.parse().ok()?,
        None => 0,
    };
    if parts.next().is_some()
        || precision == 0
        || precision > MAX_DECIMAL_PRECISION
        || scale > precision
    {
        return None;
    }
    Some(ColumnType::Decimal { precision, scale })
}

/// Index kinds a column may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IndexKind {
    /// A roaring bitmap of doc ids per dictionary value.
    Inverted,
    /// Value-range buckets, each with a bitmap of doc ids.
    Range,
    /// Rows are sorted by this column at seal; each value maps to a contiguous doc range.
    Sorted,
    /// A bloom filter over the column's values, for segment pruning on equality.
    Bloom,
    /// A full-text index (tantivy) for `TEXT_MATCH` on a string column.
    Text,
    /// Flattened path/value keys of a JSON column, for `JSON_MATCH`.
    Json,
}

impl IndexKind {
    pub const ALL: [IndexKind; 6] = [
        IndexKind::Inverted,
        IndexKind::Range,
        IndexKind::Sorted,
        IndexKind::Bloom,
        IndexKind::Text,
        IndexKind::Json,
    ];

    pub fn name(self) -> &'static str {
        match self {
            IndexKind::Inverted => "inverted",
            IndexKind::Range => "range",
            IndexKind::Sorted => "sorted",
            IndexKind::Bloom => "bloom",
            IndexKind::Text => "text",
            IndexKind::Json => "json",
        }
    }
}

/// One column of a segment schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnDef {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: ColumnType,
    #[serde(default = "default_true")]
    pub nullable: bool,
    #[serde(default)]
    pub indexes: Vec<IndexKind>,
    /// Each doc holds an array of `ty` values (format 3; strings and integers only).
    #[serde(default, skip_serializing_if = "is_false")]
    pub multi_value: bool,
}

fn default_true() -> bool {
    true
}

fn is_false(b: &bool) -> bool {
    !b
}

impl ColumnDef {
    pub fn new(name: impl Into<String>, ty: ColumnType) -> Self {
        ColumnDef {
            name: name.into(),
            ty,
            nullable: true,
            indexes: Vec::new(),
            multi_value: false,
        }
    }

    /// A multi-value column of `ty` values.
    pub fn multi_value(name: impl Into<String>, ty: ColumnType) -> Self {
        ColumnDef {
            multi_value: true,
            ..ColumnDef::new(name, ty)
        }
    }

    /// The Arrow type the reader produces for this column.
    pub fn arrow_type(&self) -> DataType {
        match self.multi_value {
            true => crate::multi_value::list_type(self.ty.physical()),
            false => self.ty.arrow_type(),
        }
    }

    pub fn with_index(mut self, kind: IndexKind) -> Self {
        if !self.indexes.contains(&kind) {
            self.indexes.push(kind);
        }
        self
    }

    pub fn has_index(&self, kind: IndexKind) -> bool {
        self.indexes.contains(&kind)
    }
}

/// The columns of a segment, in order, and which one is the time column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentSchema {
    pub columns: Vec<ColumnDef>,
    pub time_column: Option<String>,
    /// Star-trees built at seal (format 8): pre-aggregated records over some dimension
    /// columns, see [`crate::star_tree`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub star_trees: Vec<crate::star_tree::StarTreeDef>,
}

impl SegmentSchema {
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    pub fn column(&self, name: &str) -> Option<&ColumnDef> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// The Arrow schema the reader produces (and the builder accepts, see `builder`).
    pub fn arrow_schema(&self) -> SchemaRef {
        Arc::new(Schema::new(
            self.columns
                .iter()
                .map(|c| Field::new(&c.name, c.arrow_type(), c.nullable))
                .collect::<Vec<_>>(),
        ))
    }
}

/// A literal in a predicate.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    /// The exact rational `num / den` (`den > 0`) in the column's stored units: a decimal or
    /// date literal that falls between two stored values (`0.125` on a `DECIMAL(9, 2)`
    /// column is 12.5 hundredths: `Ratio(25, 2)`).
    Ratio(i128, i128),
}

impl Value {
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(v) => Some(*v),
            Value::Bool(b) => Some(*b as i64),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(v) => Some(*v as f64),
            Value::Float(v) => Some(*v),
            _ => None,
        }
    }
}
