//! Predicates over segment columns and their evaluation into doc-id bitmaps. In: a
//! [`Predicate`] tree and an open [`SegmentReader`]. Out: the [`RoaringBitmap`] of docs for
//! which the predicate is TRUE under SQL three-valued logic (a null operand is UNKNOWN, and
//! `NOT UNKNOWN` is still UNKNOWN).
//!
//! Every leaf becomes a set of key intervals in the column's order-preserving key space
//! (dictionary ids for dictionary columns, values for integers, total-order keys for floats).
//! The set is answered, in order of preference, by sorted runs, the inverted index, the range
//! index, or a scan of the blocks whose zone maps can match.

use std::sync::Arc;

use arrow::array::Array;
use roaring::RoaringBitmap;

use crate::bloom::hash_bytes;
use crate::builder::hash_key;
use crate::error::{Result, SegmentError};
use crate::json::JsonSearch;
use crate::key_match::KeyMatcher;
use crate::layout::{f64_key, ColumnMeta, ColumnStats, Encoding};
use crate::like::Like;
use crate::reader::{BlockValues, Dictionary, SegmentReader};
use crate::search::Search;
use crate::string_leaf;
use crate::text::TextSearch;
use crate::types::{Physical, Value};

/// Comparison operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    NotEq,
    Lt,
    LtEq,
    Gt,
    GtEq,
}

/// A filter the segment can answer with its indexes.
#[derive(Debug, Clone, PartialEq)]
pub enum Predicate {
    Compare {
        column: String,
        op: CmpOp,
        value: Value,
    },
    /// `low <= column <= high`.
    Between {
        column: String,
        low: Value,
        high: Value,
    },
    InList {
        column: String,
        values: Vec<Value>,
        negated: bool,
    },
    IsNull {
        column: String,
        negated: bool,
    },
    /// SQL LIKE with `%`, `_` and `\` as escape.
    Like {
        column: String,
        pattern: String,
        negated: bool,
        case_insensitive: bool,
    },
    /// `TEXT_MATCH(column, query)`: the value's tokens match the query ([`crate::text`]).
    TextMatch {
        column: String,
        search: TextSearch,
    },
    /// `JSON_MATCH(column, filter)`: the value's JSON matches the filter ([`crate::json`]).
    JsonMatch {
        column: String,
        search: JsonSearch,
    },
    And(Vec<Predicate>),
    Or(Vec<Predicate>),
    Not(Box<Predicate>),
    Const(bool),
}

impl Predicate {
    /// Columns this predicate reads.
    pub fn columns(&self, out: &mut Vec<String>) {
        match self {
            Predicate::Compare { column, .. }
            | Predicate::Between { column, .. }
            | Predicate::InList { column, .. }
            | Predicate::IsNull { column, .. }
            | Predicate::Like { column, .. }
            | Predicate::TextMatch { column, .. }
            | Predicate::JsonMatch { column, .. } => {
                if !out.contains(column) {
                    out.push(column.clone())
                }
            }
            Predicate::And(v) | Predicate::Or(v) => v.iter().for_each(|p| p.columns(out)),
            Predicate::Not(p) => p.columns(out),
            Predicate::Const(_) => {}
        }
    }
}

/// Sorted, disjoint, inclusive intervals of keys.
pub type KeySet = Vec<(i64, i64)>;

pub(crate) fn normalize(mut v: KeySet) -> KeySet {
    v.retain(|(a, b)| a <= b);
    v.sort_unstable();
    let mut out: KeySet = Vec::with_capacity(v.len());
    for (a, b) in v {
        match out.last_mut() {
            Some((_, pb)) if a <= pb.saturating_add(1) => *pb = (*pb).max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

pub(crate) fn complement(set: &KeySet) -> KeySet {
    let mut out = Vec::new();
    let mut next = i64::MIN;
    let mut open = true;
    for &(a, b) in set {
        if a > next {
            out.push((next, a - 1));
        }
        if b == i64::MAX {
            open = false;
            break;
        }
        next = b + 1;
    }
    if open {
        out.push((next, i64::MAX));
    }
    out
}

/// The keys in both sets.
pub(crate) fn intersect(a: &KeySet, b: &KeySet) -> KeySet {
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() && j < b.len() {
        let (lo, hi) = (a[i].0.max(b[j].0), a[i].1.min(b[j].1));
        if lo <= hi {
            out.push((lo, hi));
        }
        if a[i].1 < b[j].1 {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

/// A predicate over one column, made of leaves with key sets and ANDs and ORs of them, as
/// one key set (intersections and unions). `None` for anything else (IS NULL, NOT,
/// constants, raw-string tests).
fn combined_keys(reader: &SegmentReader, p: &Predicate) -> Result<Option<KeySet>> {
    Ok(match p {
        Predicate::And(v) | Predicate::Or(v) => {
            let and = matches!(p, Predicate::And(_));
            let mut acc: Option<KeySet> = None;
            for child in v {
                let Some(set) = combined_keys(reader, child)? else {
                    return Ok(None);
                };
                acc = Some(match acc {
                    None => set,
                    Some(prev) if and => intersect(&prev, &set),
                    Some(mut prev) => {
                        prev.extend(set);
                        normalize(prev)
                    }
                });
            }
            acc
        }
        Predicate::Compare { .. }
        | Predicate::Between { .. }
        | Predicate::InList { .. }
        | Predicate::Like { .. } => Some(leaf_keys(reader, p)?.1),
        Predicate::IsNull { .. }
        | Predicate::Not(_)
        | Predicate::Const(_)
        | Predicate::TextMatch { .. }
        | Predicate::JsonMatch { .. } => None,
    })
}

pub(crate) fn intersects(set: &KeySet, lo: i64, hi: i64) -> bool {
    set.iter().any(|&(a, b)| a <= hi && b >= lo)
}

fn covers(set: &KeySet, lo: i64, hi: i64) -> bool {
    set.iter().any(|&(a, b)| a <= lo && b >= hi)
}

pub(crate) fn contains(set: &KeySet, k: i64) -> bool {
    // Intervals are sorted and disjoint.
    set.binary_search_by(|&(a, b)| {
        if b < k {
            std::cmp::Ordering::Less
        } else if a > k {
            std::cmp::Ordering::Greater
        } else {
            std::cmp::Ordering::Equal
        }
    })
    .is_ok()
}

pub(crate) fn pred_err(column: &str, message: impl Into<String>) -> SegmentError {
    SegmentError::Predicate {
        column: column.to_string(),
        message: message.into(),
    }
}

/// Key bounds of a literal in a column's key space, as (first key >= v, first key > v) in a
/// "between keys" sense: for exact keys this is (k, k+1); for a float literal on an integer
/// column 2.5 gives (3, 3).
fn literal_bounds(reader: &SegmentReader, col: usize, v: &Value) -> Result<(i128, i128)> {
    let def = reader.column_def(col);
    let dict = key_dictionary(reader, col)?;
    let name = &def.name;
    if let Some(dict) = dict {
        // Dictionary space: ids.
        let (lo, hi) = match (dict.as_ref(), v) {
            (Dictionary::Str(a), Value::Str(s)) => {
                let n = a.len();
                let lo = partition(n, |i| a.value(i) < s.as_str());
                let hi = partition(n, |i| a.value(i) <= s.as_str());
                (lo, hi)
            }
            (Dictionary::I64(keys), _) => {
                let (lk, hk) = numeric_bounds(def.ty.physical(), name, v)?;
                // lk/hk are in value space: map to id space.
                let lo = keys.partition_point(|&k| (k as i128) < lk);
                let hi = keys.partition_point(|&k| (k as i128) < hk);
                (lo, hi)
            }
            (Dictionary::F64(vals), _) => {
                let (lk, hk) = numeric_bounds(Physical::F64, name, v)?;
                let lo = vals.partition_point(|&x| (f64_key(x) as i128) < lk);
                let hi = vals.partition_point(|&x| (f64_key(x) as i128) < hk);
                (lo, hi)
            }
            (Dictionary::Str(_), other) => {
                return Err(pred_err(
                    name,
                    format!("cannot compare a string column with {other:?}"),
                ))
            }
        };
        return Ok((lo as i128, hi as i128));
    }
    numeric_bounds(def.ty.physical(), name, v)
}

/// The dictionary keys are ids in: a dictionary column's, or a multi-value column's values'.
fn key_dictionary(reader: &SegmentReader, col: usize) -> Result<Option<Arc<Dictionary>>> {
    match reader.dictionary(col)? {
        Some(d) => Ok(Some(d)),
        None => reader.value_dictionary(col),
    }
}

fn partition(n: usize, pred: impl Fn(usize) -> bool) -> usize {
    let (mut lo, mut hi) = (0usize, n);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if pred(mid) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

/// (first key >= v, first key > v) in value-key space for numeric and boolean columns.
fn numeric_bounds(p: Physical, name: &str, v: &Value) -> Result<(i128, i128)> {
    match (p, v) {
        (Physical::I64 | Physical::Bool, Value::Int(i)) => Ok((*i as i128, *i as i128 + 1)),
        (Physical::Bool, Value::Bool(b)) => Ok((*b as i128, *b as i128 + 1)),
        (Physical::I64, Value::Float(f)) => {
            if f.is_nan() {
                // NaN sorts above every number.
                return Ok((i64::MAX as i128 + 1, i64::MAX as i128 + 1));
            }
            let c = f.ceil().clamp(i64::MIN as f64 - 1.0, i64::MAX as f64 + 1.0);
            let lo = c as i128;
            let hi = if f.fract() == 0.0 { lo + 1 } else { lo };
            Ok((lo, hi))
        }
        (Physical::I64, Value::Ratio(n, d)) if *d > 0 => {
            // Stored values are integers: the first >= n/d is its ceiling.
            let lo = n.div_euclid(*d) + (n.rem_euclid(*d) != 0) as i128;
            let hi = if n.rem_euclid(*d) == 0 { lo + 1 } else { lo };
            Ok((lo, hi))
        }
        (Physical::F64, Value::Float(f)) => Ok((f64_key(*f) as i128, f64_key(*f) as i128 + 1)),
        (Physical::F64, Value::Int(i)) => {
            let k = f64_key(*i as f64) as i128;
            Ok((k, k + 1))
        }
        (p, v) => Err(pred_err(
            name,
            format!("cannot compare a {p:?} column with {v:?}"),
        )),
    }
}

/// Clamps i128 intervals to i64 key space, dropping empty ones.
fn clamp(v: Vec<(i128, i128)>) -> KeySet {
    normalize(
        v.into_iter()
            .filter(|(a, b)| a <= b && *b >= i64::MIN as i128 && *a <= i64::MAX as i128)
            .map(|(a, b)| {
                (
                    a.max(i64::MIN as i128) as i64,
                    b.min(i64::MAX as i128) as i64,
                )
            })
            .collect(),
    )
}

/// Compiles a comparison into a key set.
fn compare_keys(reader: &SegmentReader, col: usize, op: CmpOp, v: &Value) -> Result<KeySet> {
    if matches!(v, Value::Null) {
        return Ok(Vec::new());
    }
    let (lo, hi) = literal_bounds(reader, col, v)?;
    let (min, max) = (i64::MIN as i128, i64::MAX as i128);
    Ok(match op {
        CmpOp::Eq => clamp(vec![(lo, hi - 1)]),
        CmpOp::NotEq => complement(&clamp(vec![(lo, hi - 1)])),
        CmpOp::Lt => clamp(vec![(min, lo - 1)]),
        CmpOp::LtEq => clamp(vec![(min, hi - 1)]),
        CmpOp::Gt => clamp(vec![(hi, max)]),
        CmpOp::GtEq => clamp(vec![(lo, max)]),
    })
}

/// Compiles a LIKE pattern over a string dictionary into the set of matching ids: Arrow's
/// kernel over the dictionary's values (see [`crate::like`]), or for a plain `prefix%` the
/// range of the sorted dictionary that starts with the prefix.
fn like_keys(
    reader: &SegmentReader,
    col: usize,
    pattern: &str,
    case_insensitive: bool,
) -> Result<KeySet> {
    let name = &reader.column_def(col).name;
    let Some(dict) = key_dictionary(reader, col)? else {
        return Err(pred_err(
            name,
            "LIKE needs a dictionary-encoded string column",
        ));
    };
    let Dictionary::Str(values) = dict.as_ref() else {
        return Err(pred_err(name, "LIKE applies to string columns"));
    };
    let like = Like::new(pattern, case_insensitive);
    if let Some(prefix) = like.prefix_only() {
        let n = values.len();
        let lo = partition(n, |i| values.value(i) < prefix);
        let hi = partition(n, |i| {
            let v = values.value(i);
            v < prefix || v.starts_with(prefix)
        });
        return Ok(normalize(vec![(lo as i64, hi as i64 - 1)]));
    }
    let mask = like.mask(values)?;
    let ids = (0..mask.len())
        .filter(|&i| mask.is_valid(i) && mask.value(i))
        .map(|i| (i as i64, i as i64))
        .collect();
    Ok(normalize(ids))
}

/// The ids of a string dictionary whose values match a text query: each distinct value
/// tokenized once (a segment without a text index for the column).
fn search_keys(reader: &SegmentReader, col: usize, search: Search<'_>) -> Result<KeySet> {
    let name = &reader.column_def(col).name;
    let dict = key_dictionary(reader, col)?;
    let Some(Dictionary::Str(values)) = dict.as_deref() else {
        return Err(pred_err(
            name,
            format!("{} applies to string columns", search.function()),
        ));
    };
    let ids = (0..values.len())
        .filter(|&i| search.matches_str(values.value(i)))
        .map(|i| (i as i64, i as i64))
        .collect();
    Ok(normalize(ids))
}

/// A compiled leaf: key intervals, or a test per value for raw string columns.
enum Leaf {
    Keys(KeySet),
    Strings(string_leaf::StrTest),
}

/// Compiles a leaf predicate for its column. IS NULL is handled by the caller.
fn compile_leaf(reader: &SegmentReader, p: &Predicate) -> Result<(usize, Leaf)> {
    let mut cols = Vec::new();
    p.columns(&mut cols);
    if let [name] = cols.as_slice() {
        let c = reader.column_index(name)?;
        if matches!(reader.column_meta(c).encoding, Encoding::RawStrings) {
            return Ok((c, Leaf::Strings(string_leaf::compile(name, p)?)));
        }
    }
    let (c, set) = leaf_keys(reader, p)?;
    Ok((c, Leaf::Keys(set)))
}

/// Compiles a leaf predicate to (column, key set). IS NULL is handled by the caller.
pub(crate) fn leaf_keys(reader: &SegmentReader, p: &Predicate) -> Result<(usize, KeySet)> {
    Ok(match p {
        Predicate::Compare { column, op, value } => {
            let c = reader.column_index(column)?;
            (c, compare_keys(reader, c, *op, value)?)
        }
        Predicate::Between { column, low, high } => {
            let c = reader.column_index(column)?;
            if matches!(low, Value::Null) || matches!(high, Value::Null) {
                return Ok((c, Vec::new()));
            }
            let (lo, _) = literal_bounds(reader, c, low)?;
            let (_, hi) = literal_bounds(reader, c, high)?;
            (c, clamp(vec![(lo, hi - 1)]))
        }
        Predicate::InList {
            column,
            values,
            negated,
        } => {
            let c = reader.column_index(column)?;
            let mut set = Vec::new();
            let mut has_null = false;
            for v in values {
                if matches!(v, Value::Null) {
                    has_null = true;
                    continue;
                }
                set.extend(compare_keys(reader, c, CmpOp::Eq, v)?);
            }
            let set = normalize(set);
            if *negated {
                // x NOT IN (.., NULL) is never TRUE.
                if has_null {
                    (c, Vec::new())
                } else {
                    (c, complement(&set))
                }
            } else {
                (c, set)
            }
        }
        Predicate::Like {
            column,
            pattern,
            negated,
            case_insensitive,
        } => {
            let c = reader.column_index(column)?;
            let set = like_keys(reader, c, pattern, *case_insensitive)?;
            (c, if *negated { complement(&set) } else { set })
        }
        p @ (Predicate::TextMatch { .. } | Predicate::JsonMatch { .. }) => {
            let (column, search) = p.search().expect("a search leaf");
            let c = reader.column_index(column)?;
            (c, search_keys(reader, c, search)?)
        }
        _ => unreachable!("leaf_keys is only called on leaves"),
    })
}

/// How a predicate was answered; the query layer reports these as metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct EvalStats {
    pub index_lookups: u64,
    pub blocks_scanned: u64,
    pub blocks_skipped: u64,
}

/// Evaluates `pred` on `reader`, returning the docs where it is TRUE.
pub fn evaluate(reader: &SegmentReader, pred: &Predicate) -> Result<RoaringBitmap> {
    let mut stats = EvalStats::default();
    evaluate_with_stats(reader, pred, &mut stats)
}

pub fn evaluate_with_stats(
    reader: &SegmentReader,
    pred: &Predicate,
    stats: &mut EvalStats,
) -> Result<RoaringBitmap> {
    check_multi_value(reader, pred)?;
    let mut e = Evaluator { reader, stats };
    e.truth(pred, None)
}

/// Multi-value columns: a leaf matches a doc when any of its values does; "none of the
/// values" is `NOT (leaf)`. Leaves that would mean "some value differs" (`!=`, `NOT IN`,
/// `NOT LIKE`) are refused rather than answered in a sense the caller may not mean.
fn check_multi_value(reader: &SegmentReader, pred: &Predicate) -> Result<()> {
    let mv = |column: &str| -> Result<bool> {
        Ok(reader.column_def(reader.column_index(column)?).multi_value)
    };
    match pred {
        Predicate::And(v) | Predicate::Or(v) => {
            v.iter().try_for_each(|p| check_multi_value(reader, p))
        }
        Predicate::Not(p) => check_multi_value(reader, p),
        Predicate::Compare {
            column,
            op: CmpOp::NotEq,
            ..
        }
        | Predicate::InList {
            column,
            negated: true,
            ..
        }
        | Predicate::Like {
            column,
            negated: true,
            ..
        } if mv(column)? => Err(pred_err(
            column,
            "a multi-value column matches when any value does: write NOT (column = ...) \
             for none of its values",
        )),
        _ => Ok(()),
    }
}

/// A child of an AND: the merged key set of its children over one column, or a child
/// evaluated on its own.
enum Part<'p> {
    Keys(usize, KeySet),
    Pred(&'p Predicate),
}

struct Evaluator<'a> {
    reader: &'a SegmentReader,
    stats: &'a mut EvalStats,
}

impl Evaluator<'_> {
    /// Docs where `p` is TRUE; when `candidates` is given the result may be restricted to them.
    fn truth(
        &mut self,
        p: &Predicate,
        candidates: Option<&RoaringBitmap>,
    ) -> Result<RoaringBitmap> {
        match p {
            Predicate::Const(true) => Ok(self.reader.all_docs()),
            Predicate::Const(false) => Ok(RoaringBitmap::new()),
            Predicate::IsNull { column, negated } => {
                let c = self.reader.column_index(column)?;
                let nulls = self.reader.nulls(c)?;
                Ok(if *negated {
                    self.reader.all_docs() - nulls.as_ref()
                } else {
                    nulls.as_ref().clone()
                })
            }
            Predicate::And(children) => {
                let mut acc: Option<RoaringBitmap> = candidates.cloned();
                // Children over the same column merge into one key set, so the column is
                // decoded once (`k >= a AND k <= b AND k IN (..)`, as dynamic filters put it).
                let mut order: Vec<Part> = Vec::with_capacity(children.len());
                for child in children {
                    match self.one_column_keys(child)? {
                        Some((c, set)) => match order.iter_mut().find_map(|p| match p {
                            Part::Keys(pc, ps) if *pc == c => Some(ps),
                            _ => None,
                        }) {
                            Some(ps) => *ps = intersect(ps, &set),
                            None => order.push(Part::Keys(c, set)),
                        },
                        None => order.push(Part::Pred(child)),
                    }
                }
                // Cheap, indexed children first so scans see fewer candidates.
                order.sort_by_key(|p| match p {
                    Part::Keys(c, _) => 2 - u8::from(self.indexed(*c)),
                    Part::Pred(p) => self.cost(p),
                });
                for part in order {
                    let t = match part {
                        Part::Keys(c, set) => self.keys_to_docs(c, &set, acc.as_ref())?,
                        Part::Pred(p) => self.truth(p, acc.as_ref())?,
                    };
                    acc = Some(match acc {
                        Some(a) => a & t,
                        None => t,
                    });
                    if acc.as_ref().is_some_and(|a| a.is_empty()) {
                        break;
                    }
                }
                Ok(acc.unwrap_or_else(|| self.reader.all_docs()))
            }
            Predicate::Or(children) => {
                // Branches over one column (a dynamic filter's per-partition IN lists) are
                // one key set: one decode of the column instead of one per branch.
                if let Some((c, set)) = self.one_column_keys(p)? {
                    return self.keys_to_docs(c, &set, candidates);
                }
                let mut acc = RoaringBitmap::new();
                for c in children {
                    acc |= self.truth(c, candidates)?;
                }
                Ok(acc)
            }
            Predicate::Not(inner) => {
                let (t, u) = self.tri(inner)?;
                Ok(self.reader.all_docs() - t - u)
            }
            leaf => Ok(self.leaf_docs(leaf, candidates)?.1),
        }
    }

    /// (TRUE docs, UNKNOWN docs) of `p`.
    fn tri(&mut self, p: &Predicate) -> Result<(RoaringBitmap, RoaringBitmap)> {
        let all = self.reader.all_docs();
        match p {
            Predicate::Const(_) | Predicate::IsNull { .. } => {
                Ok((self.truth(p, None)?, RoaringBitmap::new()))
            }
            Predicate::And(children) => {
                let mut t = all.clone();
                let mut f = RoaringBitmap::new();
                for c in children {
                    let (ct, cu) = self.tri(c)?;
                    f |= &all - &ct - &cu;
                    t &= ct;
                }
                let u = all - &t - &f;
                Ok((t, u))
            }
            Predicate::Or(children) => {
                let mut t = RoaringBitmap::new();
                let mut f = all.clone();
                for c in children {
                    let (ct, cu) = self.tri(c)?;
                    f &= &all - &ct - &cu;
                    t |= ct;
                }
                let u = all - &t - &f;
                Ok((t, u))
            }
            Predicate::Not(inner) => {
                let (t, u) = self.tri(inner)?;
                Ok((all - &t - &u, u))
            }
            leaf => {
                let (c, t) = self.leaf_docs(leaf, None)?;
                Ok((t, self.reader.nulls(c)?.as_ref().clone()))
            }
        }
    }

    /// A leaf's column and the docs where it is TRUE (restricted to `candidates` if given):
    /// through its key set, or row by row on raw string columns.
    fn leaf_docs(
        &mut self,
        leaf: &Predicate,
        candidates: Option<&RoaringBitmap>,
    ) -> Result<(usize, RoaringBitmap)> {
        if let Some((column, search)) = leaf.search() {
            let c = self.reader.column_index(column)?;
            if let Some(answer) = search.index_docs(self.reader, c)? {
                self.stats.index_lookups += 1;
                let mut docs = answer.docs;
                if let Some(cands) = candidates {
                    docs &= cands;
                }
                // Docs the index left out are tested from their values.
                let mut rest = answer.uncovered;
                if let Some(cands) = candidates {
                    rest &= cands;
                }
                if !rest.is_empty() {
                    docs |= self.value_docs(leaf, Some(&rest))?.1;
                }
                return Ok((c, docs));
            }
        }
        self.value_docs(leaf, candidates)
    }

    /// A leaf's docs through its key set, or row by row on raw string columns.
    fn value_docs(
        &mut self,
        leaf: &Predicate,
        candidates: Option<&RoaringBitmap>,
    ) -> Result<(usize, RoaringBitmap)> {
        Ok(match compile_leaf(self.reader, leaf)? {
            (c, Leaf::Keys(set)) => (c, self.keys_to_docs(c, &set, candidates)?),
            (c, Leaf::Strings(test)) => (
                c,
                string_leaf::docs(self.reader, c, &test, candidates, self.stats)?,
            ),
        })
    }

    /// `p` as one key set of one single-valued column with keys (see [`combined_keys`]);
    /// the column is checked before any leaf is compiled.
    fn one_column_keys(&self, p: &Predicate) -> Result<Option<(usize, KeySet)>> {
        let mut cols = Vec::new();
        p.columns(&mut cols);
        let [name] = cols.as_slice() else {
            return Ok(None);
        };
        let c = self.reader.column_index(name)?;
        if matches!(
            self.reader.column_meta(c).encoding,
            Encoding::RawStrings | Encoding::MultiValue { .. }
        ) {
            return Ok(None);
        }
        Ok(combined_keys(self.reader, p)?.map(|set| (c, set)))
    }

    fn indexed(&self, c: usize) -> bool {
        let m = self.reader.column_meta(c);
        m.inverted.is_some() || m.sorted_runs.is_some() || m.range.is_some()
    }

    /// A rough cost rank: indexed leaves first, scans last.
    fn cost(&self, p: &Predicate) -> u8 {
        let mut cols = Vec::new();
        p.columns(&mut cols);
        let indexed = cols
            .iter()
            .all(|c| self.reader.column_index(c).is_ok_and(|i| self.indexed(i)));
        let search_indexed = p.search().is_some_and(|(column, search)| {
            self.reader
                .column_index(column)
                .is_ok_and(|c| search.indexed(self.reader, c))
        });
        match (p, indexed) {
            (Predicate::Const(_) | Predicate::IsNull { .. }, _) => 0,
            _ if search_indexed => 1,
            (_, true) => 1,
            _ => 2,
        }
    }

    /// Docs (non-null) whose key in column `c` lies in `set`.
    fn keys_to_docs(
        &mut self,
        c: usize,
        set: &KeySet,
        candidates: Option<&RoaringBitmap>,
    ) -> Result<RoaringBitmap> {
        let r = self.reader;
        let meta = r.column_meta(c);
        let nulls = r.nulls(c)?;
        if set.is_empty() {
            return Ok(RoaringBitmap::new());
        }
        let (kmin, kmax) = match &meta.encoding {
            Encoding::Dictionary { cardinality, .. } | Encoding::MultiValue { cardinality, .. } => {
                if *cardinality == 0 {
                    return Ok(RoaringBitmap::new());
                }
                (0, *cardinality as i64 - 1)
            }
            Encoding::Raw { .. } | Encoding::Packed => match stats_bounds(&meta.stats) {
                Some(b) => b,
                None => return Ok(RoaringBitmap::new()),
            },
            Encoding::RawStrings => {
                return Err(pred_err(&meta.name, "raw strings have no key space"))
            }
        };
        let multi = matches!(meta.encoding, Encoding::MultiValue { .. });
        if !intersects(set, kmin, kmax) {
            return Ok(RoaringBitmap::new());
        }
        // (A multi-value doc may hold no value at all.)
        if covers(set, kmin, kmax) && !multi {
            return Ok(r.all_docs() - nulls.as_ref());
        }
        if let Some(starts) = r.sorted_runs(c)? {
            self.stats.index_lookups += 1;
            let mut out = RoaringBitmap::new();
            for &(a, b) in set {
                let a = a.max(kmin) as usize;
                let b = b.min(kmax);
                if (a as i64) > b {
                    continue;
                }
                let (s, e) = (starts[a], starts[b as usize + 1]);
                if s < e {
                    out.insert_range(s..e);
                }
            }
            return Ok(out);
        }
        if let Some(table) = r.inverted(c)? {
            if SegmentReader::table_len(&table) as i64 == kmax + 1 {
                self.stats.index_lookups += 1;
                let ids: u64 = set
                    .iter()
                    .map(|&(a, b)| (b.min(kmax) - a.max(kmin) + 1).max(0) as u64)
                    .sum();
                let card = (kmax + 1) as u64;
                let mut out = RoaringBitmap::new();
                // Multi-value docs can hold matching and other values: union only.
                if ids * 2 <= card || multi {
                    for &(a, b) in set {
                        for id in a.max(kmin)..=b.min(kmax) {
                            out |= r.table_bitmap(&table, id as usize)?;
                        }
                    }
                    return Ok(out);
                }
                // Most ids match: subtract the few that do not.
                for &(a, b) in &complement(set) {
                    if a > kmax || b < kmin {
                        continue;
                    }
                    for id in a.max(kmin)..=b.min(kmax) {
                        out |= r.table_bitmap(&table, id as usize)?;
                    }
                }
                return Ok(r.all_docs() - nulls.as_ref() - out);
            }
        }
        if let (Some(table), Some(rm)) = (r.range_table(c)?, &meta.range) {
            self.stats.index_lookups += 1;
            let mut out = RoaringBitmap::new();
            let mut partial = RoaringBitmap::new();
            for (i, b) in rm.buckets.iter().enumerate() {
                if covers(set, b.min, b.max) {
                    out |= r.table_bitmap(&table, i)?;
                } else if intersects(set, b.min, b.max) {
                    partial |= r.table_bitmap(&table, i)?;
                }
            }
            if let Some(cand) = candidates {
                partial &= cand;
            }
            if !partial.is_empty() {
                out |= self.scan(c, set, (kmin, kmax), Some(&partial), &nulls)?;
            }
            return Ok(out);
        }
        self.scan(c, set, (kmin, kmax), candidates, &nulls)
    }

    /// Decodes the blocks whose zone maps can match and tests each doc (its key within
    /// `bounds`, the column's key space). A block where few docs are still candidates
    /// decodes and tests only those.
    fn scan(
        &mut self,
        c: usize,
        set: &KeySet,
        (kmin, kmax): (i64, i64),
        candidates: Option<&RoaringBitmap>,
        nulls: &RoaringBitmap,
    ) -> Result<RoaringBitmap> {
        let r = self.reader;
        let meta = r.column_meta(c);
        let multi = matches!(meta.encoding, Encoding::MultiValue { .. });
        let matcher = KeyMatcher::new(set, kmin, kmax);
        let br = r.block_rows() as u32;
        let mut out = RoaringBitmap::new();
        // A block's matches are collected, then appended in one sorted run (blocks come in
        // doc order): one `insert` per matching row cost half of a selective scan's time.
        let mut hits: Vec<u32> = Vec::with_capacity(br as usize);
        let mut picked: Vec<usize> = Vec::new();
        let mut mask: Vec<u8> = Vec::new();
        for (b, block) in meta.blocks.iter().enumerate() {
            let start = b as u32 * br;
            let len = r.block_len(b);
            let end = start + len as u32;
            let in_block = match candidates {
                Some(cand) => cand.range_cardinality(start..end),
                None => len as u64,
            };
            if in_block == 0 {
                self.stats.blocks_skipped += 1;
                continue;
            }
            let Some(zone) = block.zone else {
                self.stats.blocks_skipped += 1;
                continue;
            };
            if !intersects(set, zone.min, zone.max) {
                self.stats.blocks_skipped += 1;
                continue;
            }
            if covers(set, zone.min, zone.max) && block.null_count == 0 && !multi {
                out.insert_range(start..end);
                continue;
            }
            self.stats.blocks_scanned += 1;
            hits.clear();
            // Few candidates left in the block: read those rows alone (bit-packed and packed
            // blocks are read without unpacking the rest).
            let sparse = !multi && in_block * 4 < len as u64;
            let values = if sparse {
                picked.clear();
                if let Some(cand) = candidates {
                    picked.extend(cand.range(start..end).map(|d| (d - start) as usize));
                }
                r.block_values(c, b, Some(&picked))?
            } else {
                r.block(c, b)?
            };
            let rows = if sparse { picked.len() } else { len };
            if values.len() != rows {
                return Err(pred_err(
                    &meta.name,
                    format!("block {b} decodes to {} of its {rows} rows", values.len()),
                ));
            }
            let row = |i: usize| start + if sparse { picked[i] as u32 } else { i as u32 };
            match values {
                BlockValues::Ids(ids) => {
                    matcher.select(ids.len(), |i| ids[i] as i64, row, &mut hits)
                }
                BlockValues::I64(v) => matcher.select(v.len(), |i| v[i], row, &mut hits),
                BlockValues::F64(v) => matcher.select(v.len(), |i| f64_key(v[i]), row, &mut hits),
                BlockValues::Strs(_) => {
                    return Err(pred_err(&meta.name, "raw strings have no key space"))
                }
                BlockValues::Multi { counts, ids } => {
                    // A doc matches when any of its values does.
                    let mut at = 0usize;
                    for (i, &n) in counts.iter().enumerate() {
                        let values = ids.get(at..at + n as usize).ok_or_else(|| {
                            pred_err(
                                &meta.name,
                                "a multi-value block holds fewer values than its counts",
                            )
                        })?;
                        if values.iter().any(|&id| matcher.test(id as i64)) {
                            hits.push(start + i as u32);
                        }
                        at += n as usize;
                    }
                }
            }
            append_hits(&mut out, &hits, start, len, &mut mask)
                .map_err(|e| pred_err(&meta.name, format!("unsorted matches: {e}")))?;
        }
        if !nulls.is_empty() {
            out -= nulls;
        }
        Ok(out)
    }
}

/// Adds a block's matching docs (ascending, in `start..start + len`, above everything `out`
/// holds) to `out`. Many matches go in as a bit mask (roaring builds its containers from the
/// bytes); a few are appended one by one.
fn append_hits(
    out: &mut RoaringBitmap,
    hits: &[u32],
    start: u32,
    len: usize,
    mask: &mut Vec<u8>,
) -> std::result::Result<(), roaring::NonSortedIntegers> {
    if hits.len() * 16 < len || !start.is_multiple_of(8) {
        return out.append(hits.iter().copied()).map(|_| ());
    }
    mask.clear();
    mask.resize(len.div_ceil(8), 0);
    for &d in hits {
        let i = d.wrapping_sub(start) as usize;
        if let Some(byte) = mask.get_mut(i >> 3) {
            *byte |= 1 << (i & 7);
        }
    }
    *out |= RoaringBitmap::from_lsb0_bytes(start, mask);
    Ok(())
}

/// False when the column's bloom filter proves none of `values` is present.
fn bloom_may_contain(reader: &SegmentReader, column: &str, values: &[Value]) -> Result<bool> {
    let c = reader.column_index(column)?;
    let Some(bloom) = reader.bloom(c)? else {
        return Ok(true);
    };
    let p = reader.column_def(c).ty.physical();
    for v in values {
        let h = match (p, v) {
            (Physical::Str, Value::Str(s)) => hash_bytes(s.as_bytes()),
            (Physical::I64, Value::Int(i)) => hash_key(*i, false),
            (Physical::Bool, Value::Bool(b)) => hash_key(*b as i64, false),
            (Physical::F64, Value::Float(f)) => hash_key(f64_key(*f), true),
            (Physical::F64, Value::Int(i)) => hash_key(f64_key(*i as f64), true),
            (_, Value::Null) => continue,
            // Anything else is decided exactly by the key-set path.
            _ => return Ok(true),
        };
        if bloom.may_contain(h) {
            return Ok(true);
        }
    }
    Ok(false)
}

fn stats_bounds(s: &ColumnStats) -> Option<(i64, i64)> {
    Some((s.min_key?, s.max_key?))
}

/// Whether a segment can hold any row matching `pred`, judged from footer statistics and
/// bloom filters only (no blocks read). False means the segment can be skipped.
pub fn may_match(reader: &SegmentReader, pred: &Predicate) -> Result<bool> {
    check_multi_value(reader, pred)?;
    Ok(match pred {
        Predicate::Const(b) => *b,
        Predicate::And(v) => {
            for p in v {
                if !may_match(reader, p)? {
                    return Ok(false);
                }
            }
            true
        }
        Predicate::Or(v) => {
            for p in v {
                if may_match(reader, p)? {
                    return Ok(true);
                }
            }
            false
        }
        Predicate::Not(_) | Predicate::IsNull { .. } | Predicate::Like { .. } => true,
        // Pruned by the index: a word or JSON key the query needs is in no value.
        p @ (Predicate::TextMatch { .. } | Predicate::JsonMatch { .. }) => {
            let (column, search) = p.search().expect("a search leaf");
            search.may_match(reader, reader.column_index(column)?)?
        }
        Predicate::Compare {
            column,
            op: CmpOp::Eq,
            value,
        } if !bloom_may_contain(reader, column, std::slice::from_ref(value))? => false,
        Predicate::InList {
            column,
            values,
            negated: false,
        } if !bloom_may_contain(reader, column, values)? => false,
        leaf => {
            let (c, set) = match compile_leaf(reader, leaf)? {
                (c, Leaf::Keys(set)) => (c, set),
                (c, Leaf::Strings(test)) => {
                    let s = &reader.column_meta(c).stats;
                    return Ok(test.may_match(s.min_str.as_deref(), s.max_str.as_deref()));
                }
            };
            if set.is_empty() {
                return Ok(false);
            }
            let meta = reader.column_meta(c);
            let bounds = match &meta.encoding {
                Encoding::Dictionary { cardinality, .. } => {
                    (*cardinality > 0).then(|| (0, *cardinality as i64 - 1))
                }
                Encoding::MultiValue { cardinality, .. } => {
                    (*cardinality > 0).then(|| (0, *cardinality as i64 - 1))
                }
                Encoding::Raw { .. } | Encoding::Packed => stats_bounds(&meta.stats),
                Encoding::RawStrings => None,
            };
            let Some((lo, hi)) = bounds else {
                return Ok(false);
            };
            if !intersects(&set, lo, hi) {
                return Ok(false);
            }
            true
        }
    })
}

/// At most how many docs of the segment `pred` can select, judged like [`may_match`] from
/// the footer only (no block read): a comparison, range or IN list counts the docs of the
/// blocks whose zone maps it can match, an AND its smallest child, an OR the sum of its
/// children (up to the segment's rows). Anything it cannot judge counts every doc. For
/// sizing work before doing it (how much a query will read), never for answering.
pub fn candidate_docs(reader: &SegmentReader, pred: &Predicate) -> u64 {
    let rows = reader.row_count() as u64;
    match pred {
        Predicate::Const(false) => 0,
        Predicate::And(v) => v
            .iter()
            .map(|p| candidate_docs(reader, p))
            .min()
            .unwrap_or(rows),
        Predicate::Or(v) => v
            .iter()
            .map(|p| candidate_docs(reader, p))
            .fold(0u64, |a, b| a.saturating_add(b))
            .min(rows),
        Predicate::Compare { .. } | Predicate::Between { .. } | Predicate::InList { .. } => {
            leaf_candidate_docs(reader, pred).unwrap_or(rows)
        }
        _ => rows,
    }
}

/// At most how many docs evaluating `pred` on the segment decodes and tests, judged from the
/// footer only: a comparison, range or IN list on a column with zone maps and no index counts
/// the blocks its zone maps can match but do not cover whole (a covered block is taken whole,
/// unread; sorted runs answer without reading a block), an AND or OR the sum of its children,
/// `NOT` its child. An indexed column counts what [`candidate_docs`] does (postings to
/// union); anything else every doc. For sizing the work of a query that needs nothing per
/// doc but the doc set (a count), never for answering.
pub fn scanned_docs(reader: &SegmentReader, pred: &Predicate) -> u64 {
    let rows = reader.row_count() as u64;
    match pred {
        Predicate::Const(_) => 0,
        Predicate::And(v) | Predicate::Or(v) => v
            .iter()
            .map(|p| scanned_docs(reader, p))
            .fold(0u64, |a, b| a.saturating_add(b)),
        Predicate::Not(p) => scanned_docs(reader, p),
        Predicate::Compare { .. } | Predicate::Between { .. } | Predicate::InList { .. } => {
            leaf_scanned_docs(reader, pred).unwrap_or(rows)
        }
        _ => rows,
    }
}

/// [`scanned_docs`] of a comparison leaf; `None` when its column has no key zone maps or the
/// leaf does not compile.
fn leaf_scanned_docs(reader: &SegmentReader, leaf: &Predicate) -> Option<u64> {
    let meta = keyed_leaf_column(reader, leaf)?;
    if meta.sorted_runs.is_some() {
        return Some(0);
    }
    let indexed = meta.inverted.is_some() || meta.range.is_some();
    // Unindexed, a block the set covers whole (no nulls) is taken unread.
    zone_map_docs(reader, meta, leaf, !indexed)
}

/// The docs of the blocks whose zone maps a comparison leaf can match; `None` when the
/// leaf's column has no key zone maps (raw strings, multi-value) or the leaf does not
/// compile.
fn leaf_candidate_docs(reader: &SegmentReader, leaf: &Predicate) -> Option<u64> {
    zone_map_docs(reader, keyed_leaf_column(reader, leaf)?, leaf, false)
}

/// The docs of the blocks of `meta` (the leaf's column) whose zone maps the leaf's key set
/// can match, leaving out, when `skip_covered`, blocks it covers whole and that hold no null.
/// A block without a zone map is all nulls, which no comparison selects: never counted.
fn zone_map_docs(
    reader: &SegmentReader,
    meta: &ColumnMeta,
    leaf: &Predicate,
    skip_covered: bool,
) -> Option<u64> {
    let (_, set) = leaf_keys(reader, leaf).ok()?;
    let mut docs = 0u64;
    for (b, block) in meta.blocks.iter().enumerate() {
        let Some(z) = block.zone else { continue };
        let covered = skip_covered && block.null_count == 0 && covers(&set, z.min, z.max);
        if intersects(&set, z.min, z.max) && !covered {
            docs += reader.block_len(b) as u64;
        }
    }
    Some(docs)
}

/// The meta of a comparison leaf's one column when its docs have one key each, ordered like
/// its values (what zone maps and footer bounds are kept in): `None` for a leaf over several
/// columns, a column the segment lacks, raw strings and multi-value columns.
fn keyed_leaf_column<'r>(reader: &'r SegmentReader, leaf: &Predicate) -> Option<&'r ColumnMeta> {
    let mut cols = Vec::new();
    leaf.columns(&mut cols);
    let [name] = cols.as_slice() else {
        return None;
    };
    let meta = reader.column_meta(reader.column_index(name).ok()?);
    (!matches!(
        meta.encoding,
        Encoding::RawStrings | Encoding::MultiValue { .. }
    ))
    .then_some(meta)
}

/// `pred` as it reads on this segment: a comparison, range or IN list that the footer's
/// bounds show TRUE for every doc (the column has no nulls and its whole range is inside)
/// becomes `Const(true)`, one TRUE for no doc `Const(false)`, and ANDs and ORs of them fold.
/// The result selects exactly the docs `pred` does here; a dashboard's moving time range
/// reads, on a segment it covers whole, as no time condition at all (what results computed
/// per segment are keyed by). Leaves under `NOT`, `IS NULL`, `LIKE`, raw-string and
/// multi-value columns, and leaves that do not compile, stay as they are.
pub fn simplify_for(reader: &SegmentReader, pred: &Predicate) -> Predicate {
    simplify(reader, pred, None)
}

/// Like [`simplify_for`], for the docs of blocks `blocks` only, judged from those blocks'
/// zone maps and null counts: the result selects the same docs as `pred` among them.
pub fn simplify_for_blocks(
    reader: &SegmentReader,
    pred: &Predicate,
    blocks: std::ops::Range<usize>,
) -> Predicate {
    simplify(reader, pred, Some(&blocks))
}

fn simplify(
    reader: &SegmentReader,
    pred: &Predicate,
    blocks: Option<&std::ops::Range<usize>>,
) -> Predicate {
    match pred {
        Predicate::And(v) | Predicate::Or(v) => {
            let and = matches!(pred, Predicate::And(_));
            let mut kept = Vec::with_capacity(v.len());
            for child in v {
                match simplify(reader, child, blocks) {
                    // TRUE in an AND, FALSE in an OR: no effect.
                    Predicate::Const(b) if b == and => {}
                    // FALSE in an AND, TRUE in an OR: decides it.
                    Predicate::Const(b) => return Predicate::Const(b),
                    p => kept.push(p),
                }
            }
            match kept.len() {
                0 => Predicate::Const(and),
                1 => kept.pop().expect("one"),
                _ if and => Predicate::And(kept),
                _ => Predicate::Or(kept),
            }
        }
        Predicate::Compare { .. } | Predicate::Between { .. } | Predicate::InList { .. } => {
            leaf_constant(reader, pred, blocks).map_or_else(|| pred.clone(), Predicate::Const)
        }
        _ => pred.clone(),
    }
}

/// Whether a comparison leaf is TRUE for every doc (`Some(true)`) or for none
/// (`Some(false)`: FALSE or UNKNOWN, the same under AND and OR, which are all that
/// [`simplify`] folds), judged from the footer (or the zone maps of `blocks`); `None` when
/// it cannot tell.
fn leaf_constant(
    reader: &SegmentReader,
    leaf: &Predicate,
    blocks: Option<&std::ops::Range<usize>>,
) -> Option<bool> {
    let meta = keyed_leaf_column(reader, leaf)?;
    // Bounds of the non-null keys (None: no non-null value), null count and doc count.
    let (bounds, nulls, docs) = match blocks {
        None => {
            let bounds = match &meta.encoding {
                Encoding::Dictionary { cardinality, .. } => {
                    (*cardinality > 0).then(|| (0, *cardinality as i64 - 1))
                }
                _ => stats_bounds(&meta.stats),
            };
            (bounds, meta.stats.null_count, reader.row_count() as u64)
        }
        Some(r) => {
            let blocks = meta.blocks.get(r.clone())?;
            let mut bounds: Option<(i64, i64)> = None;
            let (mut nulls, mut docs) = (0u64, 0u64);
            for (b, block) in r.clone().zip(blocks) {
                nulls += block.null_count as u64;
                docs += reader.block_len(b) as u64;
                if let Some(z) = block.zone {
                    bounds = Some(
                        bounds.map_or((z.min, z.max), |(lo, hi)| (lo.min(z.min), hi.max(z.max))),
                    );
                }
            }
            (bounds, nulls, docs)
        }
    };
    let (_, set) = leaf_keys(reader, leaf).ok()?;
    let Some((lo, hi)) = bounds else {
        // No non-null value: the leaf is UNKNOWN for every doc.
        return (docs > 0 && nulls == docs).then_some(false);
    };
    if !intersects(&set, lo, hi) {
        return Some(false);
    }
    (nulls == 0 && covers(&set, lo, hi)).then_some(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyset_ops() {
        assert_eq!(
            normalize(vec![(5, 6), (1, 2), (3, 3)]),
            vec![(1, 3), (5, 6)]
        );
        assert_eq!(
            complement(&vec![(1, 3)]),
            vec![(i64::MIN, 0), (4, i64::MAX)]
        );
        assert_eq!(complement(&vec![(i64::MIN, i64::MAX)]), vec![]);
        assert!(contains(&vec![(1, 3), (7, 9)], 8));
        assert!(!contains(&vec![(1, 3), (7, 9)], 5));
        assert_eq!(
            intersect(&vec![(1, 5), (8, 12), (20, 20)], &vec![(3, 9), (11, 30)]),
            vec![(3, 5), (8, 9), (11, 12), (20, 20)]
        );
        assert_eq!(intersect(&vec![(1, 2)], &vec![(3, 4)]), vec![]);
    }

    proptest::proptest! {
        #[test]
        fn intersect_is_the_keys_in_both(
            a in proptest::collection::vec((-20i64..20, 0i64..6), 0..6),
            b in proptest::collection::vec((-20i64..20, 0i64..6), 0..6),
        ) {
            let set = |v: &Vec<(i64, i64)>| normalize(v.iter().map(|&(s, l)| (s, s + l)).collect());
            let (a, b) = (set(&a), set(&b));
            let both = intersect(&a, &b);
            for k in -25..30 {
                proptest::prop_assert_eq!(contains(&both, k), contains(&a, k) && contains(&b, k));
            }
            proptest::prop_assert_eq!(normalize(both.clone()), both);
        }
    }
}
