//! Logical column types, index kinds and literal values shared by the builder, the reader and
//! the predicate evaluator. In: nothing. Out: the vocabulary of the segment schema.
//!
//! Every logical type maps to one physical kind that decides how values are stored:
//! INT/LONG/TIMESTAMP → i64, FLOAT/DOUBLE → f64, BOOLEAN → bool, STRING/JSON → UTF-8 bytes.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::{Deserialize, Serialize};

/// A column's logical type, as written in a table spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
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
    pub const ALL: [ColumnType; 8] = [
        ColumnType::String,
        ColumnType::Int,
        ColumnType::Long,
        ColumnType::Float,
        ColumnType::Double,
        ColumnType::Boolean,
        ColumnType::Timestamp,
        ColumnType::Json,
    ];

    pub fn physical(self) -> Physical {
        match self {
            ColumnType::Int | ColumnType::Long | ColumnType::Timestamp => Physical::I64,
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
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ColumnType::String => "STRING",
            ColumnType::Int => "INT",
            ColumnType::Long => "LONG",
            ColumnType::Float => "FLOAT",
            ColumnType::Double => "DOUBLE",
            ColumnType::Boolean => "BOOLEAN",
            ColumnType::Timestamp => "TIMESTAMP",
            ColumnType::Json => "JSON",
        }
    }

    pub fn parse(s: &str) -> Option<ColumnType> {
        ColumnType::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(s))
    }
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
    /// Reserved for a full-text index; not built yet.
    Text,
}

impl IndexKind {
    pub const ALL: [IndexKind; 5] = [
        IndexKind::Inverted,
        IndexKind::Range,
        IndexKind::Sorted,
        IndexKind::Bloom,
        IndexKind::Text,
    ];

    pub fn name(self) -> &'static str {
        match self {
            IndexKind::Inverted => "inverted",
            IndexKind::Range => "range",
            IndexKind::Sorted => "sorted",
            IndexKind::Bloom => "bloom",
            IndexKind::Text => "text",
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
