//! Row-level dynamic filters, run conjunct by conjunct in an adaptive order. In: the parts
//! of a scan's dynamic filters that no segment predicate expresses (a large build's
//! hash-table lookup, a struct key set), one conjunct per filter, and a segment's docs.
//! Out: the docs every conjunct keeps, with the columns read to decide it.
//!
//! Each conjunct reads its own columns, for the docs the ones before it kept: a scan probed
//! by two joins (TPC-H Q07's line items against 8,000 suppliers and 1.2M orders) runs the
//! cheap, selective lookup over every row and the expensive one over the few rows left.
//! Which conjunct goes first is learnt while the scan runs, as a database orders the
//! conjuncts of a filter (the rank of Hellerstein's predicate migration): cost per row over
//! the share of rows it removes, measured over every partition and segment that uses the
//! same value of the filters. A conjunct that keeps most of what it sees in a segment is
//! skipped for the rest of it: a dynamic filter only ever removes rows its producer
//! discards anyway, so leaving it out changes no answer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{Array, ArrayRef, BooleanArray};
use arrow::datatypes::{Field, Schema, SchemaRef};
use arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::utils::collect_columns;
use datafusion::physical_plan::PhysicalExpr;

/// A conjunct keeping more than this share of the rows it saw in a segment (after
/// [`ROW_FILTER_PROBE`] rows) is skipped for the rest of the segment: reading its columns
/// costs more than the rows it removes.
pub(crate) const ROW_FILTER_KEEP_LIMIT: f64 = 0.75;
pub(crate) const ROW_FILTER_PROBE: usize = 32 * 1024;

/// One conjunct: an expression over a few of the scan's output columns.
struct Conjunct {
    /// The expression with its columns renumbered onto `inputs`.
    expr: Arc<dyn PhysicalExpr>,
    /// Output columns (indexes into the scan's schema) it reads, in order.
    inputs: Vec<usize>,
    schema: SchemaRef,
    /// Results by value, for a conjunct over one integer column of a narrow range.
    memo: Option<Memo>,
}

/// Most values a [`Memo`] covers: two bits each, 1 MiB at most, so that it stays in cache.
const MEMO_VALUES_MAX: u64 = 1 << 22;

/// A conjunct's result per value of its single integer column, learnt as rows arrive: a
/// value's first rows go to the expression (a hash-table lookup into a build side that may
/// not fit in cache: TPC-H Q07's 120,000 customers, probed by 15M orders), later ones read
/// two bits. The expression is a function of the column's value alone, and the memo lives
/// as long as the filter's value.
struct Memo {
    lo: i64,
    hi: i64,
    /// Bit `v - lo`: whether value `v`'s result is known, and if so whether it passes.
    /// `pass` is written before `known` (release) and read after it (acquire).
    known: Vec<AtomicU64>,
    pass: Vec<AtomicU64>,
}

impl Memo {
    fn new(lo: i64, hi: i64) -> Option<Memo> {
        let span = (hi as i128 - lo as i128 + 1) as u64;
        if hi < lo || span > MEMO_VALUES_MAX {
            return None;
        }
        let words = span.div_ceil(64) as usize;
        Some(Memo {
            lo,
            hi,
            known: (0..words).map(|_| AtomicU64::new(0)).collect(),
            pass: (0..words).map(|_| AtomicU64::new(0)).collect(),
        })
    }

    /// The known result for `v` (inside the bounds).
    fn get(&self, v: i64) -> Option<bool> {
        let i = (v - self.lo) as usize;
        let bit = 1u64 << (i % 64);
        if self.known[i / 64].load(Ordering::Acquire) & bit == 0 {
            return None;
        }
        Some(self.pass[i / 64].load(Ordering::Relaxed) & bit != 0)
    }

    fn set(&self, v: i64, pass: bool) {
        let i = (v - self.lo) as usize;
        let bit = 1u64 << (i % 64);
        if pass {
            self.pass[i / 64].fetch_or(bit, Ordering::Relaxed);
        }
        self.known[i / 64].fetch_or(bit, Ordering::Release);
    }
}

/// Looks up each row of `vals` (with `nulls`) in `memo`: known results go to `out`, the
/// rows of values not known yet to `unknown`. NULLs and values outside the bounds do not
/// pass.
fn look_up<T: Copy + Into<i64>>(
    memo: &Memo,
    vals: &[T],
    nulls: Option<&arrow::buffer::NullBuffer>,
    out: &mut [bool],
    unknown: &mut Vec<u32>,
) {
    for (i, &v) in vals.iter().enumerate() {
        let v: i64 = v.into();
        if v < memo.lo || v > memo.hi || nulls.is_some_and(|n| n.is_null(i)) {
            continue;
        }
        match memo.get(v) {
            Some(p) => out[i] = p,
            None => unknown.push(i as u32),
        }
    }
}

/// Value `i` of integer array `a` (Int64, Int32 or Date32).
fn int_value(a: &dyn Array, i: usize) -> Option<i64> {
    use arrow::array::AsArray;
    use arrow::datatypes::{DataType, Date32Type, Int32Type, Int64Type};
    match a.data_type() {
        DataType::Int64 => Some(a.as_primitive::<Int64Type>().value(i)),
        DataType::Int32 => Some(a.as_primitive::<Int32Type>().value(i).into()),
        DataType::Date32 => Some(a.as_primitive::<Date32Type>().value(i).into()),
        _ => None,
    }
}

/// Bounds `e` (over one column, index 0) puts on its column through `col >= lo` and
/// `col <= hi` conjuncts, as a hash join's dynamic filter carries its build's min and max.
fn bounds(e: &Arc<dyn PhysicalExpr>) -> (Option<i64>, Option<i64>) {
    use datafusion::logical_expr::Operator;
    use datafusion::physical_expr::expressions::{BinaryExpr, Literal};
    use datafusion::scalar::ScalarValue;
    let Some(b) = e.as_any().downcast_ref::<BinaryExpr>() else {
        return (None, None);
    };
    if *b.op() == Operator::And {
        let (l, r) = (bounds(b.left()), bounds(b.right()));
        let lo = match (l.0, r.0) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        let hi = match (l.1, r.1) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        return (lo, hi);
    }
    let is_col = b.left().as_any().downcast_ref::<Column>().is_some();
    let v = match b
        .right()
        .as_any()
        .downcast_ref::<Literal>()
        .map(|l| l.value())
    {
        Some(ScalarValue::Int64(Some(v))) => *v,
        Some(ScalarValue::Int32(Some(v)) | ScalarValue::Date32(Some(v))) => i64::from(*v),
        _ => return (None, None),
    };
    if !is_col {
        return (None, None);
    }
    match b.op() {
        Operator::GtEq => (Some(v), None),
        Operator::Gt => (v.checked_add(1), None),
        Operator::LtEq => (None, Some(v)),
        Operator::Lt => (None, v.checked_sub(1)),
        _ => (None, None),
    }
}

/// What a conjunct cost and kept, summed over every run of the same filter value.
#[derive(Default)]
struct Measured {
    rows: AtomicU64,
    kept: AtomicU64,
    nanos: AtomicU64,
}

impl Measured {
    /// Lower runs first: nanoseconds per row over the share of rows removed. A conjunct
    /// not measured yet ranks first, so that every one gets measured.
    fn rank(&self) -> f64 {
        let rows = self.rows.load(Ordering::Relaxed);
        if rows == 0 {
            return 0.0;
        }
        let kept = self.kept.load(Ordering::Relaxed) as f64 / rows as f64;
        let cost = self.nanos.load(Ordering::Relaxed) as f64 / rows as f64;
        cost / (1.0 - kept).max(1e-3)
    }
}

/// The row-level part of a scan's dynamic filters; clones share their measurements.
#[derive(Clone)]
pub(crate) struct RowFilter {
    conjuncts: Arc<[Conjunct]>,
    measured: Arc<[Measured]>,
}

impl RowFilter {
    /// A filter keeping the rows every one of `exprs` (over the scan's `output` schema) is
    /// true for; `None` for no expressions.
    pub(crate) fn new(
        exprs: Vec<Arc<dyn PhysicalExpr>>,
        output: &SchemaRef,
    ) -> DfResult<Option<RowFilter>> {
        if exprs.is_empty() {
            return Ok(None);
        }
        let conjuncts = exprs
            .into_iter()
            .map(|e| {
                let mut inputs: Vec<usize> =
                    collect_columns(&e).iter().map(|c| c.index()).collect();
                inputs.sort_unstable();
                inputs.dedup();
                let fields: Vec<Field> = inputs.iter().map(|&i| output.field(i).clone()).collect();
                let expr = renumber(e, &inputs)?;
                let memo = match (inputs.len(), bounds(&expr)) {
                    (1, (Some(lo), Some(hi))) => Memo::new(lo, hi),
                    _ => None,
                };
                Ok(Conjunct {
                    expr,
                    inputs,
                    schema: Arc::new(Schema::new(fields)),
                    memo,
                })
            })
            .collect::<DfResult<Vec<_>>>()?;
        let measured = conjuncts.iter().map(|_| Measured::default()).collect();
        Ok(Some(RowFilter {
            conjuncts: conjuncts.into(),
            measured,
        }))
    }

    /// A run of this filter over one segment, with its own keep counts.
    pub(crate) fn start(self) -> RowFilterRun {
        let n = self.conjuncts.len();
        RowFilterRun {
            filter: self,
            seen: vec![0; n],
            kept: vec![0; n],
            skipped: vec![false; n],
        }
    }

    /// The conjuncts' order for the next batch, best rank first.
    fn order(&self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.conjuncts.len()).collect();
        if order.len() > 1 {
            let ranks: Vec<f64> = self.measured.iter().map(Measured::rank).collect();
            order.sort_by(|&a, &b| ranks[a].total_cmp(&ranks[b]));
        }
        order
    }
}

/// Which rows of `columns` (the arrays of a conjunct's inputs, in order) pass: through the
/// conjunct's memo when it has one.
fn evaluate(c: &Conjunct, columns: Vec<ArrayRef>) -> DfResult<BooleanArray> {
    let Some(memo) = &c.memo else {
        return evaluate_expr(c, columns);
    };
    use arrow::array::AsArray;
    use arrow::datatypes::{DataType, Date32Type, Int32Type, Int64Type};
    let a = columns[0].as_ref();
    let mut out = vec![false; a.len()];
    let mut unknown: Vec<u32> = Vec::new();
    match a.data_type() {
        DataType::Int64 => {
            let p = a.as_primitive::<Int64Type>();
            look_up(memo, p.values(), p.nulls(), &mut out, &mut unknown);
        }
        DataType::Int32 => {
            let p = a.as_primitive::<Int32Type>();
            look_up(memo, p.values(), p.nulls(), &mut out, &mut unknown);
        }
        DataType::Date32 => {
            let p = a.as_primitive::<Date32Type>();
            look_up(memo, p.values(), p.nulls(), &mut out, &mut unknown);
        }
        _ => return evaluate_expr(c, columns),
    }
    if !unknown.is_empty() {
        let idx = arrow::array::UInt32Array::from(unknown);
        let picked = arrow::compute::take(a, &idx, None)?;
        let got = evaluate_expr(c, vec![picked])?;
        for (k, &i) in idx.values().iter().enumerate() {
            let p = got.value(k);
            out[i as usize] = p;
            if let Some(v) = int_value(a, i as usize) {
                memo.set(v, p);
            }
        }
    }
    Ok(BooleanArray::from(out))
}

/// Which rows of `columns` pass the conjunct's expression; a NULL result does not pass.
fn evaluate_expr(c: &Conjunct, columns: Vec<ArrayRef>) -> DfResult<BooleanArray> {
    let n = columns.first().map_or(0, |c| c.len());
    let batch = RecordBatch::try_new_with_options(
        Arc::clone(&c.schema),
        columns,
        &RecordBatchOptions::new().with_row_count(Some(n)),
    )?;
    let v = c.expr.evaluate(&batch)?.into_array(n)?;
    let b = v.as_any().downcast_ref::<BooleanArray>().ok_or_else(|| {
        DataFusionError::Internal(format!(
            "a dynamic filter evaluated to {} rather than booleans",
            v.data_type()
        ))
    })?;
    Ok(match b.null_count() {
        0 => b.clone(),
        _ => arrow::compute::prep_null_mask_filter(b),
    })
}

/// A [`RowFilter`] running over one segment.
pub(crate) struct RowFilterRun {
    filter: RowFilter,
    /// Per conjunct: rows seen and kept in this segment, and whether it is skipped for the
    /// rest of it.
    seen: Vec<usize>,
    kept: Vec<usize>,
    skipped: Vec<bool>,
}

/// Docs a [`RowFilterRun`] kept, with the output columns it read for them.
pub(crate) struct Filtered {
    pub docs: Vec<u32>,
    /// (output column, its values for `docs`).
    pub columns: Vec<(usize, ArrayRef)>,
}

impl Filtered {
    /// The values of output column `i` for the kept docs, if the filter read them.
    pub(crate) fn column(&self, i: usize) -> Option<&ArrayRef> {
        self.columns.iter().find(|(c, _)| *c == i).map(|(_, a)| a)
    }
}

impl RowFilterRun {
    /// Whether any conjunct still runs in this segment.
    pub(crate) fn is_active(&self) -> bool {
        self.skipped.iter().any(|s| !s)
    }

    /// The docs of `docs` every running conjunct keeps. `read(column, docs)` reads output
    /// column `column` for `docs`; each conjunct reads the columns not read yet for the docs
    /// still kept.
    pub(crate) fn filter<E>(
        &mut self,
        docs: &[u32],
        mut read: impl FnMut(usize, &[u32]) -> Result<ArrayRef, E>,
    ) -> DfResult<Filtered>
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        let mut out = Filtered {
            docs: docs.to_vec(),
            columns: Vec::new(),
        };
        for i in self.filter.order() {
            if self.skipped[i] || out.docs.is_empty() {
                continue;
            }
            let c = &self.filter.conjuncts[i];
            let started = Instant::now();
            let mut inputs = Vec::with_capacity(c.inputs.len());
            for &col in &c.inputs {
                let a = match out.column(col) {
                    Some(a) => Arc::clone(a),
                    None => {
                        let a = read(col, &out.docs)
                            .map_err(|e| DataFusionError::External(Box::new(e)))?;
                        out.columns.push((col, Arc::clone(&a)));
                        a
                    }
                };
                inputs.push(a);
            }
            let keep = evaluate(c, inputs)?;
            let n = out.docs.len();
            let kept = keep.true_count();
            if kept < n {
                let mut pass = keep.values().iter();
                out.docs.retain(|_| pass.next().unwrap_or(false));
                for (_, a) in out.columns.iter_mut() {
                    *a = arrow::compute::filter(a, &keep)?;
                }
            }
            let m = &self.filter.measured[i];
            m.rows.fetch_add(n as u64, Ordering::Relaxed);
            m.kept.fetch_add(kept as u64, Ordering::Relaxed);
            m.nanos
                .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
            self.seen[i] += n;
            self.kept[i] += kept;
            if self.seen[i] >= ROW_FILTER_PROBE
                && self.kept[i] as f64 > self.seen[i] as f64 * ROW_FILTER_KEEP_LIMIT
            {
                self.skipped[i] = true;
            }
        }
        Ok(out)
    }
}

/// `e` with each column renumbered to its position in `inputs`.
fn renumber(e: Arc<dyn PhysicalExpr>, inputs: &[usize]) -> DfResult<Arc<dyn PhysicalExpr>> {
    e.transform(|n| {
        Ok(match n.as_any().downcast_ref::<Column>() {
            Some(c) => {
                let at = inputs.iter().position(|&i| i == c.index()).unwrap_or(0);
                Transformed::yes(Arc::new(Column::new(c.name(), at)) as Arc<dyn PhysicalExpr>)
            }
            None => Transformed::no(n),
        })
    })
    .map(|t| t.data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use arrow::datatypes::DataType;
    use datafusion::logical_expr::Operator;
    use datafusion::physical_expr::expressions::{BinaryExpr, Literal};
    use datafusion::scalar::ScalarValue;
    use std::convert::Infallible;

    fn lt(col: &str, i: usize, v: i64) -> Arc<dyn PhysicalExpr> {
        Arc::new(BinaryExpr::new(
            Arc::new(Column::new(col, i)),
            Operator::Lt,
            Arc::new(Literal::new(ScalarValue::Int64(Some(v)))),
        ))
    }

    /// Conjuncts are learnt into the cheaper, more selective first order; every order keeps
    /// the same docs, each column is read once, and only for the docs still kept.
    #[test]
    fn conjuncts_keep_the_same_rows_in_any_order_and_read_only_kept_docs() {
        let output: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int64, true),
            Field::new("b", DataType::Int64, true),
        ]));
        // a < 900 keeps 90% of docs 0..1000, b < 100 keeps 10%.
        let f = RowFilter::new(vec![lt("a", 0, 900), lt("b", 1, 100)], &output)
            .unwrap()
            .unwrap();
        let docs: Vec<u32> = (0..1000).collect();
        let mut reads: Vec<(usize, usize)> = Vec::new();
        let mut read = |c: usize, d: &[u32]| -> Result<ArrayRef, Infallible> {
            reads.push((c, d.len()));
            let v: Vec<i64> = d
                .iter()
                .map(|&x| {
                    if c == 0 {
                        x as i64
                    } else {
                        (x as i64 * 7) % 1000
                    }
                })
                .collect();
            Ok(Arc::new(Int64Array::from(v)))
        };
        let mut want = None;
        for _ in 0..4 {
            let mut run = f.clone().start();
            let got = run.filter(&docs, &mut read).unwrap();
            let expect: Vec<u32> = docs
                .iter()
                .copied()
                .filter(|&x| x < 900 && (x * 7) % 1000 < 100)
                .collect();
            assert_eq!(got.docs, expect);
            for (c, a) in &got.columns {
                assert_eq!(a.len(), got.docs.len(), "column {c}");
            }
            want.get_or_insert(got.docs);
        }
        // The first runs measured both; the later ones put `b` (selective) first and read
        // `a` for its kept docs only.
        let last = &reads[reads.len() - 2..];
        assert_eq!(last[0], (1, 1000));
        assert!(last[1].0 == 0 && last[1].1 < 200, "{last:?}");
    }

    /// A conjunct over one integer column with bounds answers repeated values from its
    /// memo, the same as the expression: NULLs, values outside the bounds and values seen
    /// before.
    #[test]
    fn a_memo_answers_as_the_expression() {
        let output: SchemaRef = Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, true)]));
        let ge: Arc<dyn PhysicalExpr> = Arc::new(BinaryExpr::new(
            Arc::new(Column::new("a", 0)),
            Operator::GtEq,
            Arc::new(Literal::new(ScalarValue::Int64(Some(10)))),
        ));
        let odd: Arc<dyn PhysicalExpr> = Arc::new(BinaryExpr::new(
            Arc::new(BinaryExpr::new(
                Arc::new(Column::new("a", 0)),
                Operator::Modulo,
                Arc::new(Literal::new(ScalarValue::Int64(Some(2)))),
            )),
            Operator::Eq,
            Arc::new(Literal::new(ScalarValue::Int64(Some(1)))),
        ));
        let e: Arc<dyn PhysicalExpr> = Arc::new(BinaryExpr::new(
            Arc::new(BinaryExpr::new(ge, Operator::And, lt("a", 0, 100))),
            Operator::And,
            odd,
        ));
        let f = RowFilter::new(vec![e], &output).unwrap().unwrap();
        assert_eq!(
            f.conjuncts[0].memo.as_ref().map(|m| (m.lo, m.hi)),
            Some((10, 99))
        );
        let values: Vec<Option<i64>> = (0..300)
            .map(|i| (i % 7 != 0).then_some((i * 13) % 130 - 5))
            .collect();
        let want: Vec<u32> = (0..300u32)
            .filter(|&i| values[i as usize].is_some_and(|v| (10..100).contains(&v) && v % 2 == 1))
            .collect();
        let docs: Vec<u32> = (0..300).collect();
        for _ in 0..2 {
            let mut run = f.clone().start();
            let read = |_: usize, d: &[u32]| -> Result<ArrayRef, Infallible> {
                Ok(Arc::new(Int64Array::from(
                    d.iter().map(|&i| values[i as usize]).collect::<Vec<_>>(),
                )))
            };
            assert_eq!(run.filter(&docs, read).unwrap().docs, want);
        }
    }

    /// A conjunct that keeps nearly everything is skipped for the rest of the segment.
    #[test]
    fn a_conjunct_keeping_most_rows_is_skipped() {
        let output: SchemaRef = Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, true)]));
        let f = RowFilter::new(vec![lt("a", 0, i64::MAX)], &output)
            .unwrap()
            .unwrap();
        let mut run = f.start();
        let docs: Vec<u32> = (0..ROW_FILTER_PROBE as u32).collect();
        let read = |_: usize, d: &[u32]| -> Result<ArrayRef, Infallible> {
            Ok(Arc::new(Int64Array::from(vec![1i64; d.len()])))
        };
        assert!(run.is_active());
        assert_eq!(run.filter(&docs, read).unwrap().docs.len(), docs.len());
        assert!(!run.is_active());
    }
}
