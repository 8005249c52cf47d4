//! A segment predicate as per-dimension filters of a star-tree. In: a [`Predicate`] (as it
//! reads on the segment) and the tree's dimensions. Out: per dimension, the dictionary ids
//! (and whether NULL) for which the predicate's conditions on that dimension are TRUE — or
//! `None` when the predicate is not an AND of conditions each on one dimension (an OR across
//! columns, a column that is not a dimension, a NULL literal), and the raw rows must answer.
//!
//! Under SQL's three-valued logic a row passes when its conditions are TRUE; each condition
//! over one column is evaluated as the pair (values where TRUE, values where FALSE), so NOT
//! and IS [NOT] NULL keep their meaning for nulls.

use crate::error::Result;
use crate::predicate::{complement, contains, intersect, leaf_keys, normalize, KeySet, Predicate};
use crate::reader::SegmentReader;
use crate::types::Value;

use super::{NULL_ID, STAR_ID};

/// The values of one dimension a query keeps: dictionary ids in `ids`, NULL when `null`.
#[derive(Debug, Clone, PartialEq)]
pub struct DimFilter {
    pub ids: KeySet,
    pub null: bool,
}

impl DimFilter {
    /// Whether a record's value passes (never the star: a filtered dimension is not starred).
    pub fn passes(&self, v: u32) -> bool {
        match v {
            NULL_ID => self.null,
            STAR_ID => false,
            id => contains(&self.ids, id as i64),
        }
    }
}

/// Where a condition over one column is TRUE and where FALSE (elsewhere UNKNOWN).
struct Truth {
    t: KeySet,
    f: KeySet,
    null_t: bool,
    null_f: bool,
}

const ALL: (i64, i64) = (i64::MIN, i64::MAX);

fn union(a: &KeySet, b: &KeySet) -> KeySet {
    let mut v = a.clone();
    v.extend_from_slice(b);
    normalize(v)
}

fn has_null_literal(p: &Predicate) -> bool {
    match p {
        Predicate::Compare { value, .. } => matches!(value, Value::Null),
        Predicate::Between { low, high, .. } => {
            matches!(low, Value::Null) || matches!(high, Value::Null)
        }
        Predicate::InList { values, .. } => values.iter().any(|v| matches!(v, Value::Null)),
        _ => false,
    }
}

/// The truth of a condition over one dictionary column, `None` where it cannot be said per
/// value.
fn truth(reader: &SegmentReader, p: &Predicate) -> Result<Option<Truth>> {
    Ok(Some(match p {
        Predicate::Compare { .. }
        | Predicate::Between { .. }
        | Predicate::InList { .. }
        | Predicate::Like { .. }
        | Predicate::TextMatch { .. }
        | Predicate::JsonMatch { .. } => {
            if has_null_literal(p) {
                return Ok(None);
            }
            let (_, t) = leaf_keys(reader, p)?;
            Truth {
                f: complement(&t),
                t,
                null_t: false,
                null_f: false,
            }
        }
        Predicate::IsNull { negated, .. } => {
            let (some, none) = (vec![ALL], Vec::new());
            match negated {
                false => Truth {
                    t: none,
                    f: some,
                    null_t: true,
                    null_f: false,
                },
                true => Truth {
                    t: some,
                    f: none,
                    null_t: false,
                    null_f: true,
                },
            }
        }
        Predicate::Not(inner) => {
            let Some(x) = truth(reader, inner)? else {
                return Ok(None);
            };
            Truth {
                t: x.f,
                f: x.t,
                null_t: x.null_f,
                null_f: x.null_t,
            }
        }
        Predicate::And(v) | Predicate::Or(v) => {
            let and = matches!(p, Predicate::And(_));
            let mut acc: Option<Truth> = None;
            for c in v {
                let Some(x) = truth(reader, c)? else {
                    return Ok(None);
                };
                acc = Some(match acc {
                    None => x,
                    Some(a) if and => Truth {
                        t: intersect(&a.t, &x.t),
                        f: union(&a.f, &x.f),
                        null_t: a.null_t && x.null_t,
                        null_f: a.null_f || x.null_f,
                    },
                    Some(a) => Truth {
                        t: union(&a.t, &x.t),
                        f: intersect(&a.f, &x.f),
                        null_t: a.null_t || x.null_t,
                        null_f: a.null_f && x.null_f,
                    },
                });
            }
            match acc {
                Some(a) => a,
                None => return Ok(None),
            }
        }
        Predicate::Const(_) => return Ok(None),
    }))
}

/// The conjuncts of `p` (nested ANDs flattened).
fn conjuncts<'a>(p: &'a Predicate, out: &mut Vec<&'a Predicate>) {
    match p {
        Predicate::And(v) => v.iter().for_each(|c| conjuncts(c, out)),
        other => out.push(other),
    }
}

/// Per dimension of `dims`, the filter `p` puts on it (`None`: none), or `None` when `p`
/// does not split into conditions on single dimensions of dictionary-encoded columns.
pub fn dimension_filters(
    reader: &SegmentReader,
    p: &Predicate,
    dims: &[String],
) -> Result<Option<Vec<Option<DimFilter>>>> {
    let mut parts = Vec::new();
    conjuncts(p, &mut parts);
    let mut out: Vec<Option<DimFilter>> = vec![None; dims.len()];
    for c in parts {
        let mut cols = Vec::new();
        c.columns(&mut cols);
        let [col] = cols.as_slice() else {
            return Ok(None);
        };
        let Some(d) = dims.iter().position(|n| n == col) else {
            return Ok(None);
        };
        let Ok(ci) = reader.column_index(col) else {
            return Ok(None);
        };
        if reader.dictionary(ci)?.is_none() {
            return Ok(None);
        }
        let Some(t) = truth(reader, c)? else {
            return Ok(None);
        };
        out[d] = Some(match out[d].take() {
            None => DimFilter {
                ids: t.t,
                null: t.null_t,
            },
            Some(prev) => DimFilter {
                ids: intersect(&prev.ids, &t.t),
                null: prev.null && t.null_t,
            },
        });
    }
    Ok(Some(out))
}
