//! Star-trees (Pinot's pre-aggregation index, format 8). In: a [`StarTreeDef`] — dimension
//! columns in split order, metrics, the most records a leaf holds — and a segment's rows at
//! build time. Out: one section of pre-aggregated records and the tree over them
//! ([`build`]), read back as a [`StarTree`] whose [`StarTree::select`] lists the records that
//! answer a GROUP BY over some of the dimensions under per-dimension filters ([`filter`]).
//!
//! The records start as the rows grouped by every dimension (sorted by them in split
//! order). A node at level `l` holds a run of records equal on the first `l` dimensions (or
//! aggregated over them: "star"); unless it holds at most `max_leaf_records` records, its
//! children split the run by dimension `l`'s value, plus a star child whose records are the
//! run aggregated over that dimension (made when there are two values or more). A query
//! follows the values its filters and keys need and the star child of every other
//! dimension, so a GROUP BY over two of five dimensions reads records already summed over
//! the other three.
//!
//! Dimension values are the segment's dictionary ids of the column (dimensions are always
//! dictionary-encoded); [`NULL_ID`] stands for a null, [`STAR_ID`] for "all values".

mod build;
pub mod filter;
mod tree;

use std::fmt;

use serde::{Deserialize, Serialize};

use std::collections::HashMap;

use arrow::array::{Array, ArrayRef, Float64Array, Int64Array, StringArray};

use crate::error::{Result, SegmentError};
use crate::layout::{Codec, FileWriter, SectionRef};
use crate::types::{Physical, SegmentSchema};
use build::{MetricInput, Op};

pub use filter::{dimension_filters, DimFilter};
pub use tree::{DimUse, MetricValues, StarTree};

/// A record's dimension value that stands for every value (the star).
pub const STAR_ID: u32 = u32::MAX;
/// A record's dimension value for a null.
pub const NULL_ID: u32 = u32::MAX - 1;
/// Dimensions a tree may have.
pub const MAX_DIMENSIONS: usize = 16;
/// Records a tree may hold; a segment whose tree would need more is written without it.
pub const MAX_RECORDS: usize = 1 << 24;
/// HyperLogLog registers of an `approx_distinct` metric: DataFusion's sketch (2^14).
pub const SKETCH_REGISTERS: usize = 1 << 14;

/// One star-tree of a table, as its spec declares it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StarTreeDef {
    /// Dimension columns, in the order the tree splits on them.
    pub dimensions: Vec<String>,
    /// Aggregates kept per record (`count(*)` is always kept).
    pub metrics: Vec<StarMetric>,
    /// A node with at most this many records is a leaf (default 10,000).
    #[serde(default = "default_leaf")]
    pub max_leaf_records: u32,
}

fn default_leaf() -> u32 {
    10_000
}

/// An aggregate a star-tree keeps per record.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum StarMetric {
    /// `count(*)`.
    Count,
    /// `sum(col)` over a numeric column; with the count of its non-null values, so it also
    /// answers `avg(col)` and `count(col)`.
    Sum(String),
    Min(String),
    Max(String),
    /// `approx_distinct(col)` over a string column: DataFusion's HyperLogLog registers.
    ApproxDistinct(String),
}

impl StarMetric {
    /// Parses `count(*)`, `sum(c)`, `min(c)`, `max(c)`, `approx_distinct(c)` (function names
    /// in any case; `distinctcounthll` is Pinot's name for the last).
    pub fn parse(s: &str) -> Result<StarMetric, String> {
        let bad = || {
            format!(
                "star-tree metric {s:?} is not one of count(*), sum(col), min(col), max(col), \
                 approx_distinct(col)"
            )
        };
        let t = s.trim();
        let open = t.find('(').ok_or_else(bad)?;
        let inner = t[open + 1..].strip_suffix(')').ok_or_else(bad)?.trim();
        let name = t[..open].trim().to_ascii_lowercase();
        let col = || {
            let ok = !inner.is_empty()
                && inner
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$');
            ok.then(|| inner.to_string()).ok_or_else(bad)
        };
        Ok(match name.as_str() {
            "count" if inner == "*" => StarMetric::Count,
            "sum" => StarMetric::Sum(col()?),
            "min" => StarMetric::Min(col()?),
            "max" => StarMetric::Max(col()?),
            "approx_distinct" | "distinctcounthll" => StarMetric::ApproxDistinct(col()?),
            _ => return Err(bad()),
        })
    }

    /// The column it aggregates (none for `count(*)`).
    pub fn column(&self) -> Option<&str> {
        match self {
            StarMetric::Count => None,
            StarMetric::Sum(c)
            | StarMetric::Min(c)
            | StarMetric::Max(c)
            | StarMetric::ApproxDistinct(c) => Some(c),
        }
    }
}

impl fmt::Display for StarMetric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StarMetric::Count => write!(f, "count(*)"),
            StarMetric::Sum(c) => write!(f, "sum({c})"),
            StarMetric::Min(c) => write!(f, "min({c})"),
            StarMetric::Max(c) => write!(f, "max({c})"),
            StarMetric::ApproxDistinct(c) => write!(f, "approx_distinct({c})"),
        }
    }
}

impl TryFrom<String> for StarMetric {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        StarMetric::parse(&s)
    }
}

impl From<StarMetric> for String {
    fn from(m: StarMetric) -> String {
        m.to_string()
    }
}

/// Where a built tree is (the footer's `star_trees`): the index of its definition in the
/// schema's `star_trees`, its section, and its size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StarTreeMeta {
    pub tree: u32,
    pub section: SectionRef,
    pub nodes: u32,
    pub records: u32,
}

/// The sketch hash of a string (ahash with DataFusion's fixed seeds): what DataFusion's
/// `approx_distinct` hashes a string with, so registers kept here merge with its sketches.
pub fn sketch_hash_str(s: &str) -> u64 {
    const SEED: ahash::RandomState = ahash::RandomState::with_seeds(
        0x885f6cab121d01a3,
        0x71e4379f2976ad8f,
        0xbf30173dd28a8816,
        0x0eaea5d736d733a4,
    );
    SEED.hash_one(s)
}

/// A sketch hash's register and rank (DataFusion's HyperLogLog with 2^14 registers).
pub fn sketch_register(h: u64) -> (u16, u8) {
    const P: u32 = 14;
    let idx = (h as usize & (SKETCH_REGISTERS - 1)) as u16;
    let rank = ((h >> P) | (1u64 << (64 - P))).trailing_zeros() as u8 + 1;
    (idx, rank)
}

fn schema_err(column: &str, message: impl Into<String>) -> SegmentError {
    SegmentError::Schema {
        column: column.to_string(),
        message: message.into(),
    }
}

/// Checks a definition against the schema: dimensions are distinct single-value columns (at
/// most [`MAX_DIMENSIONS`]), `sum`/`min`/`max` aggregate numeric columns and
/// `approx_distinct` string ones.
pub fn validate(schema: &SegmentSchema, def: &StarTreeDef) -> Result<()> {
    if def.dimensions.is_empty() || def.dimensions.len() > MAX_DIMENSIONS {
        return Err(schema_err(
            "",
            format!("a star-tree has 1 to {MAX_DIMENSIONS} dimensions"),
        ));
    }
    for (i, d) in def.dimensions.iter().enumerate() {
        let c = schema
            .column(d)
            .ok_or_else(|| schema_err(d, "star-tree dimension is not a column"))?;
        if c.multi_value {
            return Err(schema_err(
                d,
                "a multi-value column cannot be a star-tree dimension",
            ));
        }
        if def.dimensions[..i].contains(d) {
            return Err(schema_err(d, "star-tree dimension named twice"));
        }
    }
    for m in &def.metrics {
        let Some(name) = m.column() else { continue };
        let c = schema
            .column(name)
            .ok_or_else(|| schema_err(name, format!("star-tree metric {m}: no such column")))?;
        let ok = !c.multi_value
            && match m {
                StarMetric::ApproxDistinct(_) => c.ty.physical() == Physical::Str,
                _ => matches!(c.ty.physical(), Physical::I64 | Physical::F64),
            };
        if !ok {
            return Err(schema_err(
                name,
                format!("star-tree metric {m} does not apply to a {} column", c.ty),
            ));
        }
    }
    Ok(())
}

/// Builds and writes tree `t` of the schema; `columns` are the segment's (canonical Arrow
/// types, sorted as written) and `dim_ids` its dimensions' ids per row. `None` when the
/// tree would be too large.
pub(crate) fn write(
    w: &mut FileWriter,
    schema: &SegmentSchema,
    t: usize,
    def: &StarTreeDef,
    columns: &[ArrayRef],
    dim_ids: &HashMap<usize, Vec<u32>>,
) -> Result<Option<StarTreeMeta>> {
    validate(schema, def)?;
    let index = |name: &str| schema.column_index(name).expect("validated");
    let dims: Vec<Vec<u32>> = def
        .dimensions
        .iter()
        .map(|d| {
            dim_ids
                .get(&index(d))
                .cloned()
                .ok_or_else(|| schema_err(d, "star-tree dimension has no dictionary"))
        })
        .collect::<Result<_>>()?;
    let rows = columns.first().map_or(0, |c| c.len());
    let inputs: Vec<MetricInput> = def
        .metrics
        .iter()
        .map(|m| {
            let Some(name) = m.column() else {
                return MetricInput::Count;
            };
            let col = &columns[index(name)];
            if let StarMetric::ApproxDistinct(_) = m {
                let s = col.as_any().downcast_ref::<StringArray>().expect("utf8");
                return MetricInput::Sketch(
                    s.iter()
                        .map(|v| v.map(|v| sketch_register(sketch_hash_str(v))))
                        .collect(),
                );
            }
            let op = Op::of(m).expect("sum, min or max");
            match col.as_any().downcast_ref::<Int64Array>() {
                Some(a) => MetricInput::Int {
                    op,
                    values: a.iter().collect(),
                },
                None => MetricInput::Float {
                    op,
                    values: col
                        .as_any()
                        .downcast_ref::<Float64Array>()
                        .expect("f64")
                        .iter()
                        .collect(),
                },
            }
        })
        .collect();
    let Some((bytes, nodes, records)) = build::build(def, rows, &dims, &inputs) else {
        return Ok(None);
    };
    Ok(Some(StarTreeMeta {
        tree: t as u32,
        section: w.write(&bytes, Codec::Zstd)?,
        nodes,
        records,
    }))
}

/// Per metric of `def`: whether it aggregates a float column (how its values are stored).
pub fn float_metrics(schema: &SegmentSchema, def: &StarTreeDef) -> Vec<bool> {
    def.metrics
        .iter()
        .map(|m| {
            m.column()
                .and_then(|c| schema.column(c))
                .is_some_and(|c| c.ty.physical() == Physical::F64)
        })
        .collect()
}

#[cfg(test)]
mod tests;
