//! Row estimates of logical plans, for ordering joins before DataFusion plans them.
//! In: a [`LogicalPlan`] whose scans are [`SegmentTable`]s. Out: an [`Estimate`] of its rows
//! and, per output column, distinct values and integer bounds; `None` where a node is not
//! understood (the caller then leaves the plan as written).
//!
//! Segment footers give each table's rows, each column's distinct values per segment and
//! its integer bounds. A filter's selectivity comes from them: `col = v` keeps one distinct
//! value in `ndv`, a range keeps its share of the column's bounds (all ranges on one column
//! of a conjunction intersected first: `o_orderdate >= '1994-01-01' AND o_orderdate <
//! '1995-01-01'` is one year of seven), `IN` its values' share. Anything else keeps a fixed
//! guess. An equi-join keeps `|L| * |R| / max(ndv(l), ndv(r))` rows, the textbook formula
//! that is exact for a foreign key into a filtered primary key.

use std::collections::HashMap;

use arrow::datatypes::DataType;
use datafusion::common::{Column, DFSchema, JoinType, ScalarValue};
use datafusion::datasource::source_as_provider;
use datafusion::logical_expr::{Between, BinaryExpr, Expr, LogicalPlan, Operator};

use crate::table::SegmentTable;

/// Share of rows a predicate keeps when nothing better is known.
const UNKNOWN_SELECTIVITY: f64 = 0.25;
/// Share of rows `LIKE` keeps.
const LIKE_SELECTIVITY: f64 = 0.1;
/// Distinct values assumed of a column nothing is known about.
const UNKNOWN_NDV: f64 = 10.0;

/// What is guessed of one column.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct ColumnEstimate {
    /// Distinct non-null values.
    pub ndv: Option<f64>,
    /// Smallest and largest value of an integer, date, timestamp or decimal column, in its
    /// stored units.
    pub bounds: Option<(i64, i64)>,
}

/// Rows of a plan and what is known of its output columns (in schema order).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Estimate {
    pub rows: f64,
    pub columns: Vec<ColumnEstimate>,
}

impl Estimate {
    fn unknown_columns(rows: f64, n: usize) -> Self {
        Estimate {
            rows,
            columns: vec![ColumnEstimate::default(); n],
        }
    }

    /// The same columns over `rows` rows: distinct counts cannot exceed them.
    fn scaled(mut self, rows: f64) -> Self {
        self.rows = rows.max(1.0);
        for c in &mut self.columns {
            c.ndv = c.ndv.map(|n| n.min(self.rows));
        }
        self
    }
}

/// The estimate of `plan`, or `None` when some node of it is not understood.
pub(crate) fn estimate(plan: &LogicalPlan) -> Option<Estimate> {
    match plan {
        LogicalPlan::TableScan(scan) => {
            let provider = source_as_provider(&scan.source).ok()?;
            let table = provider.as_any().downcast_ref::<SegmentTable>()?;
            let (rows, columns) = table.column_estimates();
            let keep = filters_keep(&provider.schema(), &columns, &scan.filters);
            let projected = match &scan.projection {
                Some(p) => p.iter().map(|&i| columns[i]).collect(),
                None => columns.clone(),
            };
            let mut rows = rows * keep;
            if let Some(n) = scan.fetch {
                rows = rows.min(n as f64);
            }
            Some(
                Estimate {
                    rows,
                    columns: projected,
                }
                .scaled(rows),
            )
        }
        LogicalPlan::Filter(f) => {
            let input = estimate(&f.input)?;
            let keep = selectivity(&f.predicate, &schema_lookup(f.input.schema(), &input));
            let rows = input.rows * keep;
            Some(input.scaled(rows))
        }
        LogicalPlan::Projection(p) => {
            let input = estimate(&p.input)?;
            let columns = p
                .expr
                .iter()
                .map(|e| match unalias(e) {
                    Expr::Column(c) => p
                        .input
                        .schema()
                        .index_of_column(c)
                        .map(|i| input.columns[i])
                        .unwrap_or_default(),
                    _ => ColumnEstimate::default(),
                })
                .collect();
            Some(Estimate {
                rows: input.rows,
                columns,
            })
        }
        LogicalPlan::SubqueryAlias(a) => estimate(&a.input),
        LogicalPlan::Sort(s) => {
            let input = estimate(&s.input)?;
            let rows = s.fetch.map_or(input.rows, |n| input.rows.min(n as f64));
            Some(input.scaled(rows))
        }
        LogicalPlan::Repartition(r) => estimate(&r.input),
        LogicalPlan::Limit(l) => {
            let input = estimate(&l.input)?;
            let fetch = match l.get_fetch_type().ok()? {
                datafusion::logical_expr::logical_plan::FetchType::Literal(n) => n,
                _ => None,
            };
            let rows = fetch.map_or(input.rows, |n| input.rows.min(n as f64));
            Some(input.scaled(rows))
        }
        LogicalPlan::Aggregate(a) => {
            let input = estimate(&a.input)?;
            let lookup = schema_lookup(a.input.schema(), &input);
            let mut groups = 1.0f64;
            let mut columns = Vec::with_capacity(a.schema.fields().len());
            for g in &a.group_expr {
                let c = match unalias(g) {
                    Expr::Column(c) => lookup(c).map(|(e, _)| e).unwrap_or_default(),
                    _ => ColumnEstimate::default(),
                };
                groups *= c.ndv.unwrap_or(input.rows / UNKNOWN_NDV);
                columns.push(c);
            }
            // Grouping sets add a column of their own; aggregates are unknown.
            columns.resize(a.schema.fields().len(), ColumnEstimate::default());
            let rows = if a.group_expr.is_empty() {
                1.0
            } else {
                groups.min(input.rows)
            };
            Some(
                Estimate {
                    rows: input.rows,
                    columns,
                }
                .scaled(rows),
            )
        }
        LogicalPlan::Distinct(d) => {
            let input_plan = d.input();
            let input = estimate(input_plan)?;
            let groups: f64 = input
                .columns
                .iter()
                .map(|c| c.ndv.unwrap_or(input.rows / UNKNOWN_NDV))
                .product();
            let rows = groups.min(input.rows);
            let n = plan.schema().fields().len();
            if n == input.columns.len() {
                Some(input.scaled(rows))
            } else {
                Some(Estimate::unknown_columns(rows, n))
            }
        }
        LogicalPlan::Join(j) => {
            let left = estimate(&j.left)?;
            let right = estimate(&j.right)?;
            let inner = {
                let mut inner = left.rows * right.rows;
                let ll = schema_lookup(j.left.schema(), &left);
                let rl = schema_lookup(j.right.schema(), &right);
                for (l, r) in &j.on {
                    let l = key_ndv(l, &ll).unwrap_or(left.rows);
                    let r = key_ndv(r, &rl).unwrap_or(right.rows);
                    inner /= l.max(r).max(1.0);
                }
                if let Some(f) = &j.filter {
                    let both = |c: &Column| ll(c).or_else(|| rl(c));
                    inner *= selectivity(f, &both);
                }
                inner
            };
            let concat = |rows: f64| {
                let mut columns = left.columns.clone();
                columns.extend(right.columns.iter().copied());
                Estimate { rows, columns }.scaled(rows)
            };
            Some(match j.join_type {
                JoinType::Inner => concat(inner),
                JoinType::Left => concat(inner.max(left.rows)),
                JoinType::Right => concat(inner.max(right.rows)),
                JoinType::Full => concat(inner.max(left.rows + right.rows)),
                JoinType::LeftSemi | JoinType::LeftAnti => {
                    let rows = left.rows.min(inner).max(1.0);
                    left.clone().scaled(rows)
                }
                JoinType::RightSemi | JoinType::RightAnti => {
                    let rows = right.rows.min(inner).max(1.0);
                    right.clone().scaled(rows)
                }
                JoinType::LeftMark => {
                    let mut e = left.clone();
                    e.columns.push(ColumnEstimate::default());
                    e
                }
                JoinType::RightMark => {
                    let mut e = right.clone();
                    e.columns.push(ColumnEstimate::default());
                    e
                }
            })
        }
        LogicalPlan::Union(u) => {
            let mut rows = 0.0;
            for i in &u.inputs {
                rows += estimate(i)?.rows;
            }
            Some(Estimate::unknown_columns(rows, u.schema.fields().len()))
        }
        _ => None,
    }
}

/// A column lookup over `estimate`, the estimate of a plan with output `schema`.
pub(crate) fn schema_lookup<'a>(
    schema: &'a DFSchema,
    estimate: &'a Estimate,
) -> impl Fn(&Column) -> Option<(ColumnEstimate, DataType)> + 'a {
    move |c: &Column| {
        let i = schema.index_of_column(c).ok()?;
        Some((estimate.columns[i], schema.field(i).data_type().clone()))
    }
}

/// Distinct values of a join key that is a column (under casts).
fn key_ndv(
    e: &Expr,
    lookup: &dyn Fn(&Column) -> Option<(ColumnEstimate, DataType)>,
) -> Option<f64> {
    match unwrap_casts(e) {
        Expr::Column(c) => lookup(c).and_then(|(e, _)| e.ndv),
        _ => None,
    }
}

pub(crate) fn unalias(e: &Expr) -> &Expr {
    match e {
        Expr::Alias(a) => unalias(&a.expr),
        e => e,
    }
}

fn unwrap_casts(e: &Expr) -> &Expr {
    match e {
        Expr::Cast(c) => unwrap_casts(&c.expr),
        Expr::TryCast(c) => unwrap_casts(&c.expr),
        Expr::Alias(a) => unwrap_casts(&a.expr),
        e => e,
    }
}

/// The share of a table's rows all of `filters` keep, with `columns` what is known of the
/// columns of `schema` (in its order).
pub(crate) fn filters_keep<'a>(
    schema: &arrow::datatypes::Schema,
    columns: &[ColumnEstimate],
    filters: impl IntoIterator<Item = &'a Expr>,
) -> f64 {
    let lookup = |c: &Column| {
        let i = schema.index_of(&c.name).ok()?;
        Some((*columns.get(i)?, schema.field(i).data_type().clone()))
    };
    filters
        .into_iter()
        .map(|f| selectivity(f, &lookup))
        .product()
}

/// The share of rows `predicate` keeps, with `lookup` answering what is known of a column.
pub(crate) fn selectivity(
    predicate: &Expr,
    lookup: &dyn Fn(&Column) -> Option<(ColumnEstimate, DataType)>,
) -> f64 {
    let mut conjuncts = Vec::new();
    split_and(predicate, &mut conjuncts);
    // Ranges on one integer column are intersected before their share is taken.
    let mut ranges: HashMap<Column, (i64, i64, (i64, i64))> = HashMap::new();
    let mut keep = 1.0;
    for c in conjuncts {
        if let Some((col, lo, hi, bounds)) = range_of(c, lookup) {
            let r = ranges.entry(col).or_insert((i64::MIN, i64::MAX, bounds));
            r.0 = r.0.max(lo);
            r.1 = r.1.min(hi);
            continue;
        }
        keep *= one(c, lookup);
    }
    for (lo, hi, (min, max)) in ranges.into_values() {
        keep *= share(lo, hi, min, max);
    }
    keep.clamp(0.0, 1.0)
}

fn split_and<'a>(e: &'a Expr, out: &mut Vec<&'a Expr>) {
    match e {
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::And,
            right,
        }) => {
            split_and(left, out);
            split_and(right, out);
        }
        e => out.push(e),
    }
}

/// The share of `[min, max]` that `[lo, hi]` covers (both inclusive).
fn share(lo: i64, hi: i64, min: i64, max: i64) -> f64 {
    let lo = lo.max(min) as f64;
    let hi = hi.min(max) as f64;
    if hi < lo {
        return 0.0;
    }
    (hi - lo + 1.0) / (max as f64 - min as f64 + 1.0)
}

/// `column op literal` (either way round) on a column with known bounds, as the inclusive
/// interval it keeps.
fn range_of(
    e: &Expr,
    lookup: &dyn Fn(&Column) -> Option<(ColumnEstimate, DataType)>,
) -> Option<(Column, i64, i64, (i64, i64))> {
    match e {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            let (col, op, value) = match (left.as_ref(), right.as_ref()) {
                (Expr::Column(c), Expr::Literal(v, _)) => (c, *op, v),
                (Expr::Literal(v, _), Expr::Column(c)) => (c, op.swap()?, v),
                _ => return None,
            };
            let (est, ty) = lookup(col)?;
            let bounds = est.bounds?;
            let k = key_of(value, &ty)?;
            let (lo, hi) = match op {
                Operator::Lt => (i64::MIN, k.checked_sub(1)?),
                Operator::LtEq => (i64::MIN, k),
                Operator::Gt => (k.checked_add(1)?, i64::MAX),
                Operator::GtEq => (k, i64::MAX),
                _ => return None,
            };
            Some((col.clone(), lo, hi, bounds))
        }
        Expr::Between(Between {
            expr,
            negated: false,
            low,
            high,
        }) => {
            let (Expr::Column(col), Expr::Literal(l, _), Expr::Literal(h, _)) =
                (expr.as_ref(), low.as_ref(), high.as_ref())
            else {
                return None;
            };
            let (est, ty) = lookup(col)?;
            let bounds = est.bounds?;
            Some((col.clone(), key_of(l, &ty)?, key_of(h, &ty)?, bounds))
        }
        _ => None,
    }
}

/// `v` in the stored units of a column of type `ty`, when they are comparable.
fn key_of(v: &ScalarValue, ty: &DataType) -> Option<i64> {
    use ScalarValue as S;
    match (v, ty) {
        (S::Int8(Some(x)), DataType::Int8) => Some(*x as i64),
        (S::Int16(Some(x)), DataType::Int16) => Some(*x as i64),
        (S::Int32(Some(x)), DataType::Int32) => Some(*x as i64),
        (S::Int64(Some(x)), DataType::Int64) => Some(*x),
        (S::Date32(Some(x)), DataType::Date32) => Some(*x as i64),
        (S::TimestampSecond(Some(x), _), DataType::Timestamp(..))
        | (S::TimestampMillisecond(Some(x), _), DataType::Timestamp(..))
        | (S::TimestampMicrosecond(Some(x), _), DataType::Timestamp(..))
        | (S::TimestampNanosecond(Some(x), _), DataType::Timestamp(..))
            if v.data_type() == *ty =>
        {
            Some(*x)
        }
        (S::Decimal128(Some(x), _, vs), DataType::Decimal128(_, ts)) if vs == ts => {
            i64::try_from(*x).ok()
        }
        _ => None,
    }
}

/// The share of rows one conjunct keeps.
fn one(e: &Expr, lookup: &dyn Fn(&Column) -> Option<(ColumnEstimate, DataType)>) -> f64 {
    let ndv = |e: &Expr| match unwrap_casts(e) {
        Expr::Column(c) => Some(lookup(c).and_then(|(e, _)| e.ndv).unwrap_or(UNKNOWN_NDV)),
        _ => None,
    };
    match e {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => match op {
            Operator::Or => {
                let (l, r) = (selectivity(left, lookup), selectivity(right, lookup));
                l + r - l * r
            }
            Operator::And => selectivity(e, lookup),
            Operator::Eq | Operator::NotEq => {
                let n = match (ndv(left), ndv(right)) {
                    (Some(n), None) | (None, Some(n)) => n,
                    // Two columns of one row: one value in the larger domain.
                    (Some(a), Some(b)) => a.max(b),
                    (None, None) => return UNKNOWN_SELECTIVITY,
                };
                let eq = 1.0 / n.max(1.0);
                if *op == Operator::Eq {
                    eq
                } else {
                    1.0 - eq
                }
            }
            Operator::Lt | Operator::LtEq | Operator::Gt | Operator::GtEq => 1.0 / 3.0,
            _ => UNKNOWN_SELECTIVITY,
        },
        Expr::Not(inner) => 1.0 - selectivity(inner, lookup),
        Expr::InList(i) => {
            let Some(n) = ndv(&i.expr) else {
                return UNKNOWN_SELECTIVITY;
            };
            let s = (i.list.len() as f64 / n.max(1.0)).min(1.0);
            if i.negated {
                1.0 - s
            } else {
                s
            }
        }
        Expr::Like(l) | Expr::SimilarTo(l) => {
            if l.negated {
                1.0 - LIKE_SELECTIVITY
            } else {
                LIKE_SELECTIVITY
            }
        }
        Expr::Between(b) => {
            let s = UNKNOWN_SELECTIVITY;
            if b.negated {
                1.0 - s
            } else {
                s
            }
        }
        Expr::IsNull(_) => 0.05,
        Expr::IsNotNull(_) => 0.95,
        Expr::Literal(ScalarValue::Boolean(Some(true)), _) => 1.0,
        Expr::Literal(ScalarValue::Boolean(_), _) => 0.0,
        _ => UNKNOWN_SELECTIVITY,
    }
}

#[cfg(test)]
mod tests {
    use datafusion::prelude::{col, lit};

    use super::*;

    fn lookup(c: &Column) -> Option<(ColumnEstimate, DataType)> {
        match c.name.as_str() {
            // Seven years of days.
            "day" => Some((
                ColumnEstimate {
                    ndv: Some(2_557.0),
                    bounds: Some((8_035, 10_591)),
                },
                DataType::Date32,
            )),
            "name" => Some((
                ColumnEstimate {
                    ndv: Some(25.0),
                    bounds: None,
                },
                DataType::Utf8,
            )),
            _ => None,
        }
    }

    fn day(d: i32) -> Expr {
        lit(ScalarValue::Date32(Some(d)))
    }

    #[test]
    fn ranges_on_one_column_are_intersected() {
        // One year of seven: 365 / 2557.
        let year = col("day").gt_eq(day(8_766)).and(col("day").lt(day(9_131)));
        let s = selectivity(&year, &lookup);
        assert!((s - 365.0 / 2_557.0).abs() < 1e-9, "{s}");
        // Either way round, and as BETWEEN.
        let flipped = day(8_766).lt_eq(col("day")).and(day(9_131).gt(col("day")));
        assert!((selectivity(&flipped, &lookup) - s).abs() < 1e-9);
        let between = col("day").between(day(8_766), day(9_130));
        assert!((selectivity(&between, &lookup) - s).abs() < 1e-9);
        // Disjoint ranges keep nothing; a range past the bounds keeps everything.
        let none = col("day").lt(day(8_766)).and(col("day").gt(day(9_000)));
        assert_eq!(selectivity(&none, &lookup), 0.0);
        assert_eq!(selectivity(&col("day").gt(day(0)), &lookup), 1.0);
    }

    #[test]
    fn equality_keeps_one_distinct_value() {
        let s = selectivity(&col("name").eq(lit("ASIA")), &lookup);
        assert!((s - 1.0 / 25.0).abs() < 1e-9);
        let s = selectivity(
            &col("name").in_list(vec![lit("A"), lit("B")], false),
            &lookup,
        );
        assert!((s - 2.0 / 25.0).abs() < 1e-9);
        let either = col("name").eq(lit("A")).or(col("name").eq(lit("B")));
        let s = selectivity(&either, &lookup);
        assert!((s - (2.0 / 25.0 - 1.0 / 625.0)).abs() < 1e-9);
        // Unknown columns and shapes keep a fixed share.
        assert_eq!(
            selectivity(&col("other").eq(lit(1)), &lookup),
            1.0 / UNKNOWN_NDV
        );
        assert!(selectivity(&col("name").like(lit("%X")), &lookup) < 0.5);
    }
}
