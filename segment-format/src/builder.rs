//! Builds an immutable segment from Arrow record batches. In: a [`SegmentSchema`] and batches
//! whose columns match it by name. Out: the bytes of one segment file (see README.md).
//!
//! Deterministic: the same rows in the same order produce the same bytes, which sealing and
//! replay rely on. Rows are re-ordered only when a column asks for a `sorted` index.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, DictionaryArray, Float64Array, Int64Array, StringArray,
    UInt32Array,
};
use arrow::compute::{cast, concat, lexsort_to_indices, take, SortColumn, SortOptions};
use arrow::datatypes::{DataType, Int32Type};
use arrow::record_batch::RecordBatch;
use roaring::RoaringBitmap;

use crate::bitpack;
use crate::bloom::{hash_bytes, Bloom};
use crate::error::{Result, SegmentError};
use crate::intern::Interner;
use crate::layout::{
    f64_key, BlockMeta, Codec, ColumnMeta, ColumnStats, Encoding, FileWriter, Footer,
    RangeIndexMeta, SectionRef, ZoneMap, FORMAT_VERSION,
};
use crate::postings::TableKind;
use crate::string_block::{length_width, put_lengths};
use crate::types::{ColumnDef, ColumnType, IndexKind, Physical, SegmentSchema};

/// Knobs of the builder; the defaults are what the server uses.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Rows per compressed block (default 8192).
    pub block_rows: usize,
    /// zstd level for blocks and dictionaries (default 3).
    pub zstd_level: i32,
    /// Numeric columns without an inverted or sorted index are dictionary-encoded only when
    /// they have at most this many distinct values (default 65536) ...
    pub max_numeric_dictionary: usize,
    /// ... and at most `rows / numeric_dictionary_ratio` of them (default 4).
    pub numeric_dictionary_ratio: usize,
    /// Buckets of a range index (default 64).
    pub range_buckets: usize,
    /// zstd-compress blocks and dictionaries (default true). In-memory segments that live
    /// for seconds (real-time chunks) skip it: building is faster and reads borrow the bytes.
    pub compress: bool,
    /// Store near-unique unindexed strings raw instead of in a dictionary (default true; see
    /// `raw_strings_pay`). Like Pinot's `noDictionaryColumns`, but chosen per segment.
    pub raw_strings: bool,
    /// Build the schema's star-trees (default true; real-time chunks, rebuilt every second,
    /// skip them).
    pub star_trees: bool,
    /// Build the text and JSON indexes columns ask for (default true; real-time chunks skip
    /// them, and `TEXT_MATCH` / `JSON_MATCH` test their values instead).
    pub text_indexes: bool,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            block_rows: 8192,
            zstd_level: 3,
            max_numeric_dictionary: 65536,
            numeric_dictionary_ratio: 4,
            range_buckets: 64,
            compress: true,
            raw_strings: true,
            star_trees: true,
            text_indexes: true,
        }
    }
}

/// Builds a segment from `batches` (which may be empty: an empty segment is valid).
pub fn build_segment(
    schema: &SegmentSchema,
    batches: &[RecordBatch],
    opts: &BuildOptions,
) -> Result<Vec<u8>> {
    if opts.block_rows == 0 || opts.block_rows > u32::MAX as usize {
        return Err(SegmentError::Schema {
            column: String::new(),
            message: "block_rows must be between 1 and 2^32-1".into(),
        });
    }
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.columns.len());
    for def in &schema.columns {
        columns.push(gather(def, batches, keeps_dictionary(schema, def))?);
    }
    let rows = columns.first().map(|c| c.len()).unwrap_or(0);
    if rows > u32::MAX as usize {
        return Err(SegmentError::Schema {
            column: String::new(),
            message: format!("{rows} rows exceed the 2^32 rows a segment can hold"),
        });
    }
    let sorted_by = schema
        .columns
        .iter()
        .position(|c| c.has_index(IndexKind::Sorted));
    if let Some(i) = sorted_by {
        let idx = stable_sort_indices(&columns[i])?;
        for c in columns.iter_mut() {
            *c = take(c.as_ref(), &idx, None)?;
        }
    }

    let mut w = FileWriter::new(opts.compress.then_some(opts.zstd_level));
    let mut metas = Vec::with_capacity(columns.len());
    // Star-tree dimensions are dictionary-encoded; their ids are kept for the trees.
    let trees = match opts.star_trees {
        true => schema.star_trees.as_slice(),
        false => &[],
    };
    let mut dim_ids: HashMap<usize, Vec<u32>> = HashMap::new();
    for (i, (def, col)) in schema.columns.iter().zip(&columns).enumerate() {
        let star_dim = trees.iter().any(|t| t.dimensions.contains(&def.name));
        let (mut meta, ids) = encode_column(&mut w, def, col, opts, star_dim)?;
        if opts.text_indexes && def.has_index(IndexKind::Text) {
            meta.text = Some(write_text_index(&mut w, def, col)?);
        }
        if opts.text_indexes && def.has_index(IndexKind::Json) {
            meta.json = Some(write_json_index(&mut w, def, col)?);
        }
        metas.push(meta);
        if let Some(ids) = ids {
            dim_ids.insert(i, ids);
        }
    }
    let mut star_trees = Vec::new();
    for (t, def) in trees.iter().enumerate() {
        if let Some(meta) = crate::star_tree::write(&mut w, schema, t, def, &columns, &dim_ids)? {
            star_trees.push(meta);
        }
    }
    let time_range = schema.time_column.as_ref().and_then(|t| {
        let i = schema.column_index(t)?;
        let (lo, hi) = (metas[i].stats.min_key?, metas[i].stats.max_key?);
        Some(match schema.columns[i].ty {
            // Days: the range covers the first to the last millisecond of those days.
            ColumnType::Date => {
                use crate::types::DAY_MS;
                (
                    lo.saturating_mul(DAY_MS),
                    hi.saturating_mul(DAY_MS).saturating_add(DAY_MS - 1),
                )
            }
            _ => (lo, hi),
        })
    });
    let footer = Footer {
        format_version: FORMAT_VERSION,
        row_count: rows as u64,
        block_rows: opts.block_rows as u32,
        schema: schema.clone(),
        time_range,
        sorted_by: sorted_by.map(|i| schema.columns[i].name.clone()),
        columns: metas,
        created_by: concat!("basalt ", env!("CARGO_PKG_VERSION")).to_string(),
        star_trees,
    };
    w.finish(&footer)
}

/// The text index of a string column (see [`crate::text::index`]).
fn write_text_index(w: &mut FileWriter, def: &ColumnDef, col: &ArrayRef) -> Result<SectionRef> {
    let Some(strings) = col.as_string_opt::<i32>() else {
        return Err(SegmentError::Schema {
            column: def.name.clone(),
            message: format!(
                "a text index needs a string column, not {}",
                col.data_type()
            ),
        });
    };
    let raw = crate::text::index::build(strings.iter()).map_err(|e| match e {
        SegmentError::Schema { message, .. } => SegmentError::Schema {
            column: def.name.clone(),
            message,
        },
        e => e,
    })?;
    w.write(&raw, Codec::None)
}

/// The JSON index of a JSON column (see [`crate::json::index`]).
fn write_json_index(w: &mut FileWriter, def: &ColumnDef, col: &ArrayRef) -> Result<SectionRef> {
    let Some(strings) = col.as_string_opt::<i32>() else {
        return Err(SegmentError::Schema {
            column: def.name.clone(),
            message: format!(
                "a JSON index needs a string column, not {}",
                col.data_type()
            ),
        });
    };
    let raw = crate::json::index::build(strings.iter())?;
    w.write(&raw, Codec::None)
}

/// Sort permutation by `col` (nulls last); ties keep their input order, so the build stays
/// deterministic.
fn stable_sort_indices(col: &ArrayRef) -> Result<UInt32Array> {
    let position: ArrayRef = Arc::new(UInt32Array::from_iter_values(0..col.len() as u32));
    let opts = SortOptions {
        descending: false,
        nulls_first: false,
    };
    Ok(lexsort_to_indices(
        &[
            SortColumn {
                values: col.clone(),
                options: Some(opts),
            },
            SortColumn {
                values: position,
                options: Some(opts),
            },
        ],
        None,
    )?)
}

/// The Arrow type of a string column kept dictionary-encoded from the input (see
/// [`keeps_dictionary`]).
pub fn string_dictionary_type() -> DataType {
    DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
}

/// Whether a column given as [`string_dictionary_type`] arrays (a Parquet reader's
/// dictionary pages) is encoded from them directly: its segment dictionary is then built once
/// per input dictionary value instead of once per row. Only plain single-value STRING columns
/// whose values nothing else reads row by row: text and JSON indexes, a sort, and star-tree
/// metrics read the strings, so those columns are cast to plain strings first.
pub fn keeps_dictionary(schema: &SegmentSchema, def: &ColumnDef) -> bool {
    def.ty == ColumnType::String
        && !def.multi_value
        && !def.has_index(IndexKind::Text)
        && !def.has_index(IndexKind::Json)
        && !def.has_index(IndexKind::Sorted)
        && !schema
            .star_trees
            .iter()
            .flat_map(|t| &t.metrics)
            .any(|m| m.column() == Some(def.name.as_str()))
}

/// Concatenates one column of every batch, cast to the column's canonical Arrow type; a
/// column that [`keeps_dictionary`] stays dictionary-encoded when every batch gives it so.
fn gather(def: &ColumnDef, batches: &[RecordBatch], keep_dictionary: bool) -> Result<ArrayRef> {
    let target = match def.multi_value {
        true => crate::multi_value::list_type(def.ty.physical()),
        false => canonical_type(def.ty.physical()),
    };
    let dictionary = string_dictionary_type();
    let keep_dictionary = keep_dictionary
        && !batches.is_empty()
        && batches.iter().all(|b| {
            b.column_by_name(&def.name)
                .is_some_and(|c| c.data_type() == &dictionary)
        });
    let mut parts: Vec<ArrayRef> = Vec::with_capacity(batches.len());
    for b in batches {
        let col = b
            .column_by_name(&def.name)
            .ok_or_else(|| SegmentError::Schema {
                column: def.name.clone(),
                message: "missing from the input batch".into(),
            })?;
        if !accepts(def, col.data_type()) {
            return Err(SegmentError::Schema {
                column: def.name.clone(),
                message: format!(
                    "Arrow type {} cannot hold {} values",
                    col.data_type(),
                    def.ty.name()
                ),
            });
        }
        if !def.nullable && col.null_count() > 0 {
            return Err(SegmentError::Schema {
                column: def.name.clone(),
                message: "column is not nullable but the input has nulls".into(),
            });
        }
        let c = match (def.ty, col.data_type()) {
            _ if def.multi_value => match col.data_type() {
                t if t == &target => col.clone(),
                _ => cast(col, &target)?,
            },
            (ColumnType::Date, _) => date_days(def, col)?,
            (ColumnType::Decimal { precision, scale }, _) => {
                decimal_unscaled(def, col, precision, scale)?
            }
            (_, DataType::Timestamp(_, _)) => {
                // Normalise to milliseconds first, then reinterpret as i64.
                let ms = cast(
                    col,
                    &DataType::Timestamp(arrow::datatypes::TimeUnit::Millisecond, None),
                )?;
                cast(&ms, &DataType::Int64)?
            }
            (_, t) if t == &target => col.clone(),
            (_, t) if keep_dictionary && t == &dictionary => col.clone(),
            _ => cast(col, &target)?,
        };
        parts.push(c);
    }
    match parts.len() {
        0 => Ok(arrow::array::new_empty_array(&target)),
        // One batch: its array as it is (maybe a slice), not copied by `concat`.
        1 => Ok(parts.pop().expect("one part")),
        _ => {
            let refs: Vec<&dyn Array> = parts.iter().map(|a| a.as_ref()).collect();
            Ok(concat(&refs)?)
        }
    }
}

/// A DATE column's input as days since the epoch (Int64); timestamps keep their day.
fn date_days(def: &ColumnDef, col: &ArrayRef) -> Result<ArrayRef> {
    let days = match col.data_type() {
        DataType::Date32 => col.clone(),
        _ => strict_cast(def, col, &DataType::Date32)?,
    };
    Ok(cast(&days, &DataType::Int64)?)
}

/// A DECIMAL column's input as unscaled Int64 values at the column's scale: decimals of
/// another scale are rounded (half away from zero, as PostgreSQL does); a value that needs
/// more than `precision` digits is an error, never a silent null.
fn decimal_unscaled(def: &ColumnDef, col: &ArrayRef, precision: u8, scale: u8) -> Result<ArrayRef> {
    let to = DataType::Decimal128(precision, scale as i8);
    let exact = match col.data_type() {
        t if t == &to => col.clone(),
        _ => strict_cast(def, col, &to)?,
    };
    let dec = exact
        .as_any()
        .downcast_ref::<arrow::array::Decimal128Array>()
        .ok_or_else(|| SegmentError::Schema {
            column: def.name.clone(),
            message: "decimal cast produced no Decimal128 values".into(),
        })?;
    // Validated to `precision` <= 18 digits, so every value fits an i64.
    let values: Vec<i64> = dec.values().iter().map(|&v| v as i64).collect();
    Ok(Arc::new(arrow::array::Int64Array::new(
        values.into(),
        dec.nulls().cloned(),
    )))
}

/// A cast that fails (naming the column) instead of turning unconvertible values into nulls.
fn strict_cast(def: &ColumnDef, col: &ArrayRef, to: &DataType) -> Result<ArrayRef> {
    let opts = arrow::compute::CastOptions {
        safe: false,
        ..Default::default()
    };
    arrow::compute::cast_with_options(col, to, &opts).map_err(|e| SegmentError::Schema {
        column: def.name.clone(),
        message: format!("cannot hold the input as {}: {e}", def.ty),
    })
}

fn canonical_type(p: Physical) -> DataType {
    match p {
        Physical::I64 => DataType::Int64,
        Physical::F64 => DataType::Float64,
        Physical::Bool => DataType::Boolean,
        Physical::Str => DataType::Utf8,
    }
}

fn accepts(def: &ColumnDef, t: &DataType) -> bool {
    use DataType::*;
    if def.multi_value {
        return match t {
            List(f) | LargeList(f) => {
                let item = ColumnDef::new("item", def.ty);
                !f.data_type().is_nested() && accepts(&item, f.data_type())
            }
            _ => false,
        };
    }
    match def.ty {
        ColumnType::Date => return matches!(t, Date32 | Date64 | Timestamp(_, _)),
        ColumnType::Decimal { .. } => {
            return matches!(
                t,
                Decimal32(..) | Decimal64(..) | Decimal128(..) | Decimal256(..)
            ) || t.is_integer()
        }
        _ => {}
    }
    match def.ty.physical() {
        Physical::I64 => matches!(
            t,
            Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32 | Timestamp(_, _)
        ),
        Physical::F64 => matches!(t, Float16 | Float32 | Float64 | Int32 | Int64),
        Physical::Bool => matches!(t, Boolean),
        Physical::Str => match t {
            Utf8 | LargeUtf8 | Utf8View => true,
            Dictionary(_, v) => matches!(v.as_ref(), Utf8 | LargeUtf8),
            _ => false,
        },
    }
}

/// Per-doc keys of a column after dictionary or raw encoding.
pub(crate) enum Encoded {
    /// Dictionary ids, the dictionary's serialized section bytes, and its value bounds.
    Dict {
        ids: Vec<u32>,
        cardinality: usize,
        dictionary: Vec<u8>,
        min_str: Option<String>,
        max_str: Option<String>,
        /// Order-preserving key per dictionary id (numeric columns only).
        id_keys: Option<Vec<i64>>,
        /// Hash per dictionary id, for the bloom filter.
        hashes: Vec<u64>,
    },
    /// Raw order-preserving keys per doc (0 for nulls) and the stored value bytes per doc.
    Raw { keys: Vec<i64>, float: bool },
    /// Near-unique strings stored as they are (see [`raw_strings_pay`]).
    RawStr {
        distinct: usize,
        min_str: Option<String>,
        max_str: Option<String>,
    },
}

fn encode_column(
    w: &mut FileWriter,
    def: &ColumnDef,
    col: &ArrayRef,
    opts: &BuildOptions,
    star_dim: bool,
) -> Result<(ColumnMeta, Option<Vec<u32>>)> {
    if def.multi_value {
        if star_dim {
            return Err(SegmentError::Schema {
                column: def.name.clone(),
                message: "a multi-value column cannot be a star-tree dimension".into(),
            });
        }
        return Ok((crate::multi_value::encode_column(w, def, col, opts)?, None));
    }
    let rows = col.len();
    let null_count = col.null_count();
    let wants_dict =
        def.has_index(IndexKind::Inverted) || def.has_index(IndexKind::Sorted) || star_dim;
    let allow_raw = opts.raw_strings && !wants_dict && !def.has_index(IndexKind::Range);
    // A dictionary-encoded input (see `keeps_dictionary`) is encoded from its dictionary; the
    // strings are read row by row only when they are stored raw.
    let mut encoded = match col.as_dictionary_opt::<Int32Type>() {
        Some(d) => dict_strings_of_dictionary(d, allow_raw),
        None => None,
    };
    let as_strings = match (&encoded, col.data_type()) {
        (Some(Encoded::Dict { .. }), _) | (_, DataType::Utf8) => None,
        (_, DataType::Dictionary(..)) => Some(cast(col, &DataType::Utf8)?),
        _ => None,
    };
    let strings = as_strings
        .as_ref()
        .unwrap_or(col)
        .as_any()
        .downcast_ref::<StringArray>();
    let encoded = match def.ty.physical() {
        Physical::Str => match encoded.take() {
            Some(e) => e,
            None => dict_strings(strings.expect("utf8"), allow_raw),
        },
        Physical::Bool => {
            let a = col.as_any().downcast_ref::<BooleanArray>().expect("bool");
            let keys: Vec<Option<i64>> = a.iter().map(|v| v.map(|b| b as i64)).collect();
            dict_numeric(&keys, false, usize::MAX).expect("booleans always fit a dictionary")
        }
        Physical::I64 => {
            let a = col.as_any().downcast_ref::<Int64Array>().expect("i64");
            let keys: Vec<Option<i64>> = a.iter().collect();
            numeric(&keys, false, wants_dict, rows, opts)
        }
        Physical::F64 => {
            let a = col.as_any().downcast_ref::<Float64Array>().expect("f64");
            let keys: Vec<Option<i64>> = a.iter().map(|v| v.map(f64_key)).collect();
            numeric(&keys, true, wants_dict, rows, opts)
        }
    };
    let nulls: Option<RoaringBitmap> = (null_count > 0).then(|| {
        (0..rows as u32)
            .filter(|&i| col.is_null(i as usize))
            .collect()
    });
    let nulls_ref = match &nulls {
        Some(bm) => Some(write_bitmap(w, bm)?),
        None => None,
    };
    let null_bits = col.nulls().filter(|n| n.null_count() > 0).cloned();
    let is_null = |i: usize| null_bits.as_ref().is_some_and(|n| n.is_null(i));

    let mut blocks = Vec::new();
    let mut stats = ColumnStats {
        min_key: None,
        max_key: None,
        min_str: None,
        max_str: None,
        null_count: null_count as u64,
        distinct: None,
        sorted: null_count == 0,
    };
    // A raw string column's order-preserving key per doc (its first bytes), for zone maps,
    // the range index and sortedness; dictionary ids and raw keys are read in place.
    let doc_keys: Vec<i64> = match &encoded {
        Encoded::Dict { .. } | Encoded::Raw { .. } => Vec::new(),
        Encoded::RawStr { .. } => strings
            .expect("utf8")
            .iter()
            .map(|v| v.map_or(0, |s| crate::string_block::prefix_key(s.as_bytes())))
            .collect(),
    };
    if let (Encoded::RawStr { .. }, Some(a)) = (&encoded, strings) {
        // Prefix keys can tie where strings differ: compare the strings.
        stats.sorted &= (1..rows).all(|i| a.value(i - 1) <= a.value(i));
    } else {
        stats.sorted &= match &encoded {
            Encoded::Dict { ids, .. } => ids.windows(2).all(|w| w[0] <= w[1]),
            Encoded::Raw { keys, .. } => keys.windows(2).all(|w| w[0] <= w[1]),
            Encoded::RawStr { .. } => doc_keys.windows(2).all(|w| w[0] <= w[1]),
        };
    }
    let encoding = match &encoded {
        Encoded::Dict {
            ids,
            cardinality,
            dictionary,
            min_str,
            max_str,
            id_keys,
            ..
        } => {
            let width = bitpack::width_for(*cardinality);
            for start in (0..rows).step_by(opts.block_rows) {
                let end = (start + opts.block_rows).min(rows);
                let packed = bitpack::pack(&ids[start..end], width);
                let data = w.write(&packed, Codec::Zstd)?;
                blocks.push(block_meta(data, &ids[start..end], start, &is_null));
            }
            stats.min_str = min_str.clone();
            stats.max_str = max_str.clone();
            stats.distinct = Some(*cardinality as u64);
            if let Some(k) = id_keys {
                stats.min_key = k.first().copied();
                stats.max_key = k.last().copied();
            }
            Encoding::Dictionary {
                cardinality: *cardinality as u32,
                bit_width: width,
                dictionary: w.write(dictionary, Codec::Zstd)?,
            }
        }
        Encoded::Raw { keys, float } => {
            // The integer form that won the column's first block by a clear margin is the
            // only one compressed for the others (see `FileWriter::write_smallest_ranked`).
            let mut settled: Option<usize> = None;
            for start in (0..rows).step_by(opts.block_rows) {
                let end = (start + opts.block_rows).min(rows);
                let data = if *float {
                    let raw: Vec<u8> = keys[start..end]
                        .iter()
                        .flat_map(|&k| crate::layout::key_f64(k).to_bits().to_le_bytes())
                        .collect();
                    w.write(&raw, Codec::Zstd)?
                } else {
                    let filled = filled_nulls(&keys[start..end], start, &is_null);
                    let forms = crate::int_block::encode_both(&filled);
                    match settled {
                        Some(form) => w.write(&forms[form], Codec::Zstd)?,
                        None => {
                            let (data, winner, clear) =
                                w.write_smallest_ranked(&[&forms[0], &forms[1]])?;
                            settled = clear.then_some(winner);
                            data
                        }
                    }
                };
                blocks.push(block_meta(data, &keys[start..end], start, &is_null));
            }
            let mut min = None::<i64>;
            let mut max = None::<i64>;
            for (i, &k) in keys.iter().enumerate() {
                if !is_null(i) {
                    min = Some(min.map_or(k, |m| m.min(k)));
                    max = Some(max.map_or(k, |m| m.max(k)));
                }
            }
            stats.min_key = min;
            stats.max_key = max;
            stats.distinct = Some(crate::ndv::estimate(
                keys.iter()
                    .enumerate()
                    .filter(|&(i, _)| !is_null(i))
                    .map(|(_, &k)| k),
            ));
            if *float {
                Encoding::Raw { delta: false }
            } else {
                Encoding::Packed
            }
        }
        Encoded::RawStr {
            distinct,
            min_str,
            max_str,
        } => {
            let a = strings.expect("utf8");
            for start in (0..rows).step_by(opts.block_rows) {
                let end = (start + opts.block_rows).min(rows);
                // Frames inside the block are compressed on their own.
                let raw =
                    crate::string_block::encode(a.slice(start, end - start).iter(), w.level())?;
                let data = w.write(&raw, Codec::None)?;
                blocks.push(block_meta(data, &doc_keys[start..end], start, &is_null));
            }
            stats.min_str = min_str.clone();
            stats.max_str = max_str.clone();
            stats.distinct = Some(*distinct as u64);
            Encoding::RawStrings
        }
    };

    let inverted = match (&encoded, def.has_index(IndexKind::Inverted)) {
        (
            Encoded::Dict {
                ids, cardinality, ..
            },
            true,
        ) => {
            let lists = crate::postings::DocLists::by_id(ids, *cardinality, is_null);
            let table = crate::postings::encode_lists(&lists, TableKind::Inverted)?;
            Some(w.write(&table, Codec::None)?)
        }
        _ => None,
    };
    let sorted_runs = match &encoded {
        Encoded::Dict {
            ids, cardinality, ..
        } if stats.sorted => {
            let mut starts = vec![0u32; cardinality + 1];
            // starts[i] = first doc with id >= i.
            let mut doc = 0usize;
            for (id, s) in starts.iter_mut().enumerate() {
                while doc < rows && (ids[doc] as usize) < id {
                    doc += 1;
                }
                *s = doc as u32;
            }
            let raw: Vec<u8> = starts.iter().flat_map(|s| s.to_le_bytes()).collect();
            Some(w.write(&raw, Codec::Zstd)?)
        }
        _ => None,
    };
    let range = if def.has_index(IndexKind::Range) {
        let buckets = opts.range_buckets;
        let (buckets, table) = match &encoded {
            Encoded::Dict {
                ids, cardinality, ..
            } => crate::range_index::of_ids(ids, *cardinality, &is_null, buckets)?,
            Encoded::Raw { keys, .. } => crate::range_index::of_keys(keys, &is_null, buckets)?,
            Encoded::RawStr { .. } => crate::range_index::of_keys(&doc_keys, &is_null, buckets)?,
        };
        Some(RangeIndexMeta {
            section: w.write(&table, Codec::None)?,
            buckets,
        })
    } else {
        None
    };
    let bloom = if def.has_index(IndexKind::Bloom) {
        let mut b;
        match &encoded {
            Encoded::Dict { hashes, .. } => {
                b = Bloom::with_capacity(hashes.len());
                for h in hashes {
                    b.insert(*h);
                }
            }
            Encoded::Raw { keys, float } => {
                b = Bloom::with_capacity(rows);
                for (i, &k) in keys.iter().enumerate() {
                    if !is_null(i) {
                        b.insert(hash_key(k, *float));
                    }
                }
            }
            Encoded::RawStr { distinct, .. } => {
                b = Bloom::with_capacity(*distinct);
                for s in strings.expect("utf8").iter().flatten() {
                    b.insert(hash_bytes(s.as_bytes()));
                }
            }
        }
        Some(w.write(&b.to_bytes(), Codec::None)?)
    } else {
        None
    };
    let star_ids = match encoded {
        Encoded::Dict { mut ids, .. } if star_dim => {
            for (doc, id) in ids.iter_mut().enumerate() {
                if is_null(doc) {
                    *id = crate::star_tree::NULL_ID;
                }
            }
            Some(ids)
        }
        _ => None,
    };
    let meta = ColumnMeta {
        name: def.name.clone(),
        encoding,
        blocks,
        nulls: nulls_ref,
        stats,
        inverted,
        range,
        sorted_runs,
        bloom,
        text: None,
        json: None,
    };
    Ok((meta, star_ids))
}

/// A block's integer keys with each null row holding the value before it (or the block's
/// first non-null value), so nulls cost no bits in [`crate::int_block`].
fn filled_nulls(keys: &[i64], start: usize, is_null: &impl Fn(usize) -> bool) -> Vec<i64> {
    let first = (0..keys.len())
        .find(|&i| !is_null(start + i))
        .map_or(0, |i| keys[i]);
    let mut prev = first;
    keys.iter()
        .enumerate()
        .map(|(i, &k)| {
            if !is_null(start + i) {
                prev = k;
            }
            prev
        })
        .collect()
}

/// The bloom hash of a numeric key: integers hash their i64 bytes, floats their f64 bits.
pub(crate) fn hash_key(key: i64, float: bool) -> u64 {
    if float {
        hash_bytes(&crate::layout::key_f64(key).to_bits().to_le_bytes())
    } else {
        hash_bytes(&key.to_le_bytes())
    }
}

fn numeric(
    keys: &[Option<i64>],
    float: bool,
    wants_dict: bool,
    rows: usize,
    opts: &BuildOptions,
) -> Encoded {
    let limit = if wants_dict {
        usize::MAX
    } else {
        opts.max_numeric_dictionary
            .min(rows / opts.numeric_dictionary_ratio.max(1))
    };
    match dict_numeric(keys, float, limit) {
        Some(e) => e,
        None => Encoded::Raw {
            keys: keys.iter().map(|k| k.unwrap_or(0)).collect(),
            float,
        },
    }
}

/// Dictionary-encodes numeric keys; None when there are more than `limit` distinct values.
/// One hash lookup per row: each value takes a provisional id on first sight, and the ids are
/// remapped to the sorted order after.
pub(crate) fn dict_numeric(keys: &[Option<i64>], float: bool, limit: usize) -> Option<Encoded> {
    use std::collections::hash_map::Entry;
    let mut distinct: HashMap<i64, u32, ahash::RandomState> =
        HashMap::with_hasher(crate::intern::fast_hasher());
    let mut seen: Vec<i64> = Vec::new();
    let mut provisional: Vec<u32> = Vec::with_capacity(keys.len());
    for k in keys {
        let id = match k {
            None => u32::MAX,
            Some(k) => match distinct.entry(*k) {
                Entry::Occupied(e) => *e.get(),
                Entry::Vacant(e) => {
                    if seen.len() >= limit {
                        return None;
                    }
                    seen.push(*k);
                    *e.insert(seen.len() as u32 - 1)
                }
            },
        };
        provisional.push(id);
    }
    let mut order: Vec<u32> = (0..seen.len() as u32).collect();
    order.sort_unstable_by_key(|&p| seen[p as usize]);
    let mut remap = vec![0u32; seen.len()];
    for (sorted, &p) in order.iter().enumerate() {
        remap[p as usize] = sorted as u32;
    }
    let values: Vec<i64> = order.iter().map(|&p| seen[p as usize]).collect();
    let ids = provisional
        .into_iter()
        .map(|p| if p == u32::MAX { 0 } else { remap[p as usize] })
        .collect();
    let mut dictionary = Vec::with_capacity(values.len() * 8);
    for &v in &values {
        let stored = if float {
            crate::layout::key_f64(v).to_bits() as i64
        } else {
            v
        };
        dictionary.extend_from_slice(&stored.to_le_bytes());
    }
    let hashes = values.iter().map(|&v| hash_key(v, float)).collect();
    Some(Encoded::Dict {
        ids,
        cardinality: values.len(),
        dictionary,
        min_str: None,
        max_str: None,
        id_keys: Some(values),
        hashes,
    })
}

/// A sorted string dictionary, front-coded (format 5): `count:u32 width:u8 prefix:u8{count}
/// suffix_len:u{width*8}{count} suffix_bytes`, where value `i` is the first `prefix[i]` bytes
/// of value `i - 1` followed by its suffix. Sorted ids, urls and hashes share their leading
/// bytes with their neighbour, which zstd alone does not find (a 1M-value dictionary of
/// random 32-character hex ids: 16.5 MB plain, 14.9 MB front-coded).
pub(crate) fn front_code<'a>(values: impl Iterator<Item = &'a [u8]> + Clone, n: usize) -> Vec<u8> {
    let mut prefixes = Vec::with_capacity(n);
    let mut suffix_lens = Vec::with_capacity(n);
    let mut prev: &[u8] = &[];
    for v in values.clone() {
        let shared = prev
            .iter()
            .zip(v)
            .take(u8::MAX as usize)
            .take_while(|(a, b)| a == b)
            .count();
        prefixes.push(shared as u8);
        suffix_lens.push((v.len() - shared) as u32);
        prev = v;
    }
    let width = length_width(suffix_lens.iter().copied().max().unwrap_or(0) as usize);
    let total: usize = suffix_lens.iter().map(|&l| l as usize).sum();
    let mut out = Vec::with_capacity(5 + n * (1 + width as usize) + total);
    out.extend_from_slice(&(n as u32).to_le_bytes());
    out.push(width);
    out.extend_from_slice(&prefixes);
    put_lengths(&mut out, &suffix_lens, width);
    for (v, &p) in values.zip(&prefixes) {
        out.extend_from_slice(&v[p as usize..]);
    }
    out
}

/// Whether `distinct` values over `non_null` rows are stored cheaper raw than in a dictionary:
/// when over 7 in 8 rows hold a value no other row holds, a dictionary saves little and every
/// row still pays a `log2(distinct)`-bit id.
fn raw_strings_pay(distinct: usize, non_null: usize) -> bool {
    non_null > 0 && distinct * 8 > non_null * 7
}

/// Dictionary-encodes a string column, or (when `allow_raw` and [`raw_strings_pay`]) leaves it
/// raw. A column a sample shows near-unique is left raw without interning its rows
/// ([`crate::near_unique`]).
pub(crate) fn dict_strings(a: &StringArray, allow_raw: bool) -> Encoded {
    if allow_raw {
        if let Some(raw) = crate::near_unique::raw_if_sample_unique(a) {
            return raw;
        }
    }
    let mut interner = Interner::new();
    let provisional = interner.ids_of(a);
    let non_null = a.len() - a.null_count();
    let (values, remap) = match sorted_distinct(interner.into_values(), non_null, allow_raw) {
        Ok(sorted) => sorted,
        Err(raw) => return *raw,
    };
    let ids = provisional
        .into_iter()
        .map(|p| if p == u32::MAX { 0 } else { remap[p as usize] })
        .collect();
    string_dictionary(&values, ids)
}

/// Dictionary-encodes a string column given as a dictionary array (a Parquet reader's
/// dictionary pages): each input dictionary value that some row uses is hashed once, and rows
/// map their key through a table. The same segment as [`dict_strings`] over the same strings.
/// None when the array is not one this can read (values not plain strings, or holding nulls,
/// or a key outside them): the caller then reads the strings row by row.
pub(crate) fn dict_strings_of_dictionary(
    a: &DictionaryArray<Int32Type>,
    allow_raw: bool,
) -> Option<Encoded> {
    let values = a.values().as_string_opt::<i32>()?;
    if values.null_count() > 0 {
        return None;
    }
    let keys = a.keys();
    // A slice of a row group may use only some of its dictionary's values; only those enter
    // the segment's dictionary.
    let mut used = vec![false; values.len()];
    for (row, &k) in keys.values().iter().enumerate() {
        if keys.is_valid(row) {
            *used.get_mut(usize::try_from(k).ok()?)? = true;
        }
    }
    let mut interner = Interner::new();
    let mut entry = vec![u32::MAX; values.len()];
    for (j, _) in used.iter().enumerate().filter(|(_, u)| **u) {
        entry[j] = interner.id(values.value(j));
    }
    let non_null = a.len() - keys.null_count();
    let (sorted, remap) = match sorted_distinct(interner.into_values(), non_null, allow_raw) {
        Ok(sorted) => sorted,
        Err(raw) => return Some(*raw),
    };
    // Each input dictionary value's final id (unused values are never looked up).
    let id_of: Vec<u32> = entry
        .iter()
        .map(|&e| if e == u32::MAX { 0 } else { remap[e as usize] })
        .collect();
    let ids = keys
        .values()
        .iter()
        .enumerate()
        .map(|(row, &k)| match keys.is_valid(row) {
            true => id_of[k as usize],
            false => 0,
        })
        .collect();
    Some(string_dictionary(&sorted, ids))
}

/// The distinct values of a string column (`distinct[id]` the value given provisional id
/// `id`) sorted, and the sorted position of each provisional id; or the column left raw when
/// `allow_raw` and [`raw_strings_pay`].
fn sorted_distinct(
    distinct: Vec<&str>,
    non_null: usize,
    allow_raw: bool,
) -> std::result::Result<(Vec<&str>, Vec<u32>), Box<Encoded>> {
    if allow_raw && raw_strings_pay(distinct.len(), non_null) {
        return Err(Box::new(Encoded::RawStr {
            distinct: distinct.len(),
            min_str: distinct.iter().min().map(|s| s.to_string()),
            max_str: distinct.iter().max().map(|s| s.to_string()),
        }));
    }
    // Sorted by an integer key of the first 8 bytes (order-preserving), the bytes compared
    // only where those tie.
    let mut keyed: Vec<(i64, &str, u32)> = distinct
        .into_iter()
        .enumerate()
        .map(|(id, s)| (crate::string_block::prefix_key(s.as_bytes()), s, id as u32))
        .collect();
    keyed.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(b.1)));
    let mut remap = vec![0u32; keyed.len()];
    for (new, (_, _, old)) in keyed.iter().enumerate() {
        remap[*old as usize] = new as u32;
    }
    Ok((keyed.into_iter().map(|(_, s, _)| s).collect(), remap))
}

/// A string column's dictionary encoding from its sorted distinct values and per-row ids.
fn string_dictionary(values: &[&str], ids: Vec<u32>) -> Encoded {
    Encoded::Dict {
        ids,
        cardinality: values.len(),
        min_str: values.first().map(|s| s.to_string()),
        max_str: values.last().map(|s| s.to_string()),
        hashes: values.iter().map(|s| hash_bytes(s.as_bytes())).collect(),
        dictionary: front_code(values.iter().map(|s| s.as_bytes()), values.len()),
        id_keys: None,
    }
}

fn block_meta<K: Copy + Into<i64>>(
    data: SectionRef,
    keys: &[K],
    start: usize,
    is_null: &impl Fn(usize) -> bool,
) -> BlockMeta {
    let mut zone: Option<ZoneMap> = None;
    let mut nulls = 0u32;
    for (i, &k) in keys.iter().enumerate() {
        if is_null(start + i) {
            nulls += 1;
            continue;
        }
        let k: i64 = k.into();
        zone = Some(match zone {
            None => ZoneMap { min: k, max: k },
            Some(z) => ZoneMap {
                min: z.min.min(k),
                max: z.max.max(k),
            },
        });
    }
    BlockMeta {
        data,
        zone,
        null_count: nulls,
    }
}

pub(crate) fn write_bitmap(w: &mut FileWriter, bm: &RoaringBitmap) -> Result<SectionRef> {
    let mut raw = Vec::with_capacity(bm.serialized_size());
    bm.serialize_into(&mut raw)
        .map_err(SegmentError::Compress)?;
    w.write(&raw, Codec::None)
}

/// A posting table (see [`crate::postings`]), stored uncompressed so entries are read in
/// place.
pub(crate) fn write_bitmaps(
    w: &mut FileWriter,
    bms: &[RoaringBitmap],
    kind: TableKind,
) -> Result<SectionRef> {
    w.write(&crate::postings::encode_table(bms, kind)?, Codec::None)
}

/// Convenience for tests and tools: builds from one batch.
pub fn build_from_batch(schema: &SegmentSchema, batch: &RecordBatch) -> Result<Vec<u8>> {
    build_segment(
        schema,
        std::slice::from_ref(batch),
        &BuildOptions::default(),
    )
}
