//! DECIMAL `+`, `-` and `*` in 64-bit integers. In: a physical plan after DataFusion's rules.
//! Out: the same plan in which each projection expression and each argument of a partial
//! aggregate that is a tree of decimal additions, subtractions and multiplications
//! ([`Decimal64Expr`]) is evaluated in one pass over `i64` unscaled values.
//!
//! Arrow keeps DECIMAL(p, s) in 128 bits and checks every product for overflow, which costs
//! a call per row: TPC-H Q01's `l_extendedprice * (1 - l_discount) * (1 + l_tax)` over 60M
//! rows spent more time there than in reading the columns. TPC-H's and most money columns
//! have a precision of at most 18, so their unscaled values and most products fit an `i64`.
//! A batch in which any value or intermediate result does not fit is evaluated by the
//! original expression instead, so results (and errors) are Arrow's in every case.
//!
//! Scales and precisions follow Arrow's rules (`arrow_arith::numeric`): a sum has the larger
//! scale of its operands (the other is multiplied up), a product the sum of their scales.

use std::any::Any;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Decimal128Array, RecordBatch};
use arrow::buffer::NullBuffer;
use arrow::datatypes::{DataType, Decimal128Type, Schema};
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::common::ScalarValue;
use datafusion::config::ConfigOptions;
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{ColumnarValue, Operator};
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_expr::expressions::BinaryExpr;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::projection::{ProjectionExec, ProjectionExpr};
use datafusion::physical_plan::ExecutionPlan;

/// The physical optimizer rule that introduces [`Decimal64Expr`]. Runs after DataFusion's
/// rules and before [`crate::segment_agg::SegmentAggregateRule`], which takes the rewritten
/// expressions into its own evaluation.
#[derive(Debug, Default)]
pub struct DecimalArith;

impl PhysicalOptimizerRule for DecimalArith {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            if let Some(p) = node.as_any().downcast_ref::<ProjectionExec>() {
                let schema = p.input().schema();
                let mut changed = false;
                let exprs: Vec<ProjectionExpr> = p
                    .expr()
                    .iter()
                    .map(|pe| {
                        let expr = fuse(&pe.expr, &schema);
                        changed |= expr.is_some();
                        ProjectionExpr {
                            expr: expr.unwrap_or_else(|| pe.expr.clone()),
                            alias: pe.alias.clone(),
                        }
                    })
                    .collect();
                if !changed {
                    return Ok(Transformed::no(node));
                }
                let new = ProjectionExec::try_new(exprs, p.input().clone())?;
                return Ok(Transformed::yes(Arc::new(new) as Arc<dyn ExecutionPlan>));
            }
            if let Some(a) = node.as_any().downcast_ref::<AggregateExec>() {
                // Only the stages that evaluate arguments over input rows.
                if !matches!(
                    a.mode(),
                    AggregateMode::Partial
                        | AggregateMode::Single
                        | AggregateMode::SinglePartitioned
                ) {
                    return Ok(Transformed::no(node));
                }
                let schema = a.input().schema();
                let mut changed = false;
                let mut aggs: Vec<Arc<AggregateFunctionExpr>> = Vec::new();
                for agg in a.aggr_expr() {
                    let fused: Vec<Option<Arc<dyn PhysicalExpr>>> =
                        agg.expressions().iter().map(|e| fuse(e, &schema)).collect();
                    if fused.iter().all(Option::is_none) {
                        aggs.push(agg.clone());
                        continue;
                    }
                    let args = fused
                        .into_iter()
                        .zip(agg.expressions())
                        .map(|(f, e)| f.unwrap_or(e))
                        .collect();
                    let order: Vec<_> = agg.order_bys().iter().map(|o| o.expr.clone()).collect();
                    match agg.with_new_expressions(args, order) {
                        Some(new) => {
                            changed = true;
                            aggs.push(Arc::new(new));
                        }
                        None => aggs.push(agg.clone()),
                    }
                }
                if !changed {
                    return Ok(Transformed::no(node));
                }
                let new = a.with_new_aggr_exprs(aggs);
                return Ok(Transformed::yes(Arc::new(new) as Arc<dyn ExecutionPlan>));
            }
            Ok(Transformed::no(node))
        })
        .data()
    }

    fn name(&self) -> &str {
        "decimal_arith"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// `expr` as a [`Decimal64Expr`] when it is a decimal `+`, `-` or `*` whose leaves are
/// decimals of precision at most 18.
fn fuse(expr: &Arc<dyn PhysicalExpr>, schema: &Schema) -> Option<Arc<dyn PhysicalExpr>> {
    let out = expr.data_type(schema).ok()?;
    let DataType::Decimal128(precision, scale) = out else {
        return None;
    };
    let program = Node::compile(expr)?;
    if !matches!(program, Node::Bin { .. }) || !program.leaves_fit(schema) {
        return None;
    }
    // Arrow's rules applied to the declared leaf types must give the declared type.
    if program.static_type(schema)? != (precision, scale) {
        return None;
    }
    Some(Arc::new(Decimal64Expr {
        original: expr.clone(),
        program,
        precision,
        scale,
    }))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Op {
    Add,
    Sub,
    Mul,
}

/// An arithmetic tree over leaf expressions (columns, casts, literals) that yield decimals.
#[derive(Debug, Clone)]
enum Node {
    Leaf(Arc<dyn PhysicalExpr>),
    Bin {
        op: Op,
        left: Box<Node>,
        right: Box<Node>,
    },
}

impl Node {
    fn compile(expr: &Arc<dyn PhysicalExpr>) -> Option<Node> {
        if let Some(b) = expr.as_any().downcast_ref::<BinaryExpr>() {
            let op = match b.op() {
                Operator::Plus => Some(Op::Add),
                Operator::Minus => Some(Op::Sub),
                Operator::Multiply => Some(Op::Mul),
                _ => None,
            };
            if let Some(op) = op {
                return Some(Node::Bin {
                    op,
                    left: Box::new(Node::compile(b.left())?),
                    right: Box::new(Node::compile(b.right())?),
                });
            }
        }
        Some(Node::Leaf(expr.clone()))
    }

    /// Every leaf is a decimal with a scale in 0..=18. Precision is not checked: `1` in
    /// `1 - l_discount` is a DECIMAL(20, 0), and a product computed once for several
    /// aggregates (`__common_expr_1 = l_extendedprice * (1 - l_discount)`) a DECIMAL(31, 4);
    /// their values are checked as they are read, and a batch with one that does not fit is
    /// left to Arrow.
    fn leaves_fit(&self, schema: &Schema) -> bool {
        match self {
            Node::Leaf(e) => matches!(
                e.data_type(schema),
                Ok(DataType::Decimal128(_, s)) if (0..=18).contains(&s)
            ),
            Node::Bin { left, right, .. } => left.leaves_fit(schema) && right.leaves_fit(schema),
        }
    }

    fn static_type(&self, schema: &Schema) -> Option<(u8, i8)> {
        match self {
            Node::Leaf(e) => match e.data_type(schema).ok()? {
                DataType::Decimal128(p, s) => Some((p, s)),
                _ => None,
            },
            Node::Bin { op, left, right } => {
                result_type(*op, left.static_type(schema)?, right.static_type(schema)?)
            }
        }
    }

    fn leaves<'a>(&'a self, out: &mut Vec<&'a Arc<dyn PhysicalExpr>>) {
        match self {
            Node::Leaf(e) => out.push(e),
            Node::Bin { left, right, .. } => {
                left.leaves(out);
                right.leaves(out);
            }
        }
    }

    fn fmt_tree(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Node::Leaf(e) => write!(f, "{e}"),
            Node::Bin { op, left, right } => {
                write!(f, "(")?;
                left.fmt_tree(f)?;
                let sym = match op {
                    Op::Add => "+",
                    Op::Sub => "-",
                    Op::Mul => "*",
                };
                write!(f, " {sym} ")?;
                right.fmt_tree(f)?;
                write!(f, ")")
            }
        }
    }
}

/// Arrow's result precision and scale of `op` (`arrow_arith::numeric::decimal_op`), `None`
/// where Arrow would fail or the fast path does not apply.
fn result_type(op: Op, (p1, s1): (u8, i8), (p2, s2): (u8, i8)) -> Option<(u8, i8)> {
    const MAX_PRECISION: u8 = 38;
    match op {
        Op::Add | Op::Sub => {
            let scale = s1.max(s2);
            let int_digits = (p1 as i8 - s1).max(p2 as i8 - s2);
            let precision = (scale.saturating_add(int_digits) as u8)
                .saturating_add(1)
                .min(MAX_PRECISION);
            Some((precision, scale))
        }
        Op::Mul => {
            let scale = s1.checked_add(s2)?;
            (scale <= 38).then(|| (p1.saturating_add(p2 + 1).min(MAX_PRECISION), scale))
        }
    }
}

/// One operand or result while evaluating: every row's unscaled value, or one for all rows.
enum Vals {
    Rows(Vec<i64>),
    Const(i64),
}

/// Evaluation state of one batch: leaf null masks collected, and whether anything left the
/// 64-bit range.
struct Eval<'a> {
    batch: &'a RecordBatch,
    rows: usize,
    nulls: Option<NullBuffer>,
    overflow: bool,
}

impl Eval<'_> {
    /// `None`: a leaf is not a decimal that fits (evaluate the original instead).
    fn node(&mut self, node: &Node) -> DfResult<Option<(Vals, i8)>> {
        match node {
            Node::Leaf(e) => self.leaf(e),
            Node::Bin { op, left, right } => {
                let Some((l, sl)) = self.node(left)? else {
                    return Ok(None);
                };
                let Some((r, sr)) = self.node(right)? else {
                    return Ok(None);
                };
                Ok(Some(match op {
                    Op::Add | Op::Sub => {
                        let scale = sl.max(sr);
                        let l = self.rescale(l, scale - sl);
                        let r = self.rescale(r, scale - sr);
                        // Each operation its own instance of `zip`: a loop the compiler
                        // can vectorize, not a call through a pointer per row.
                        let v = if *op == Op::Add {
                            self.zip(l, r, i64::overflowing_add)
                        } else {
                            self.zip(l, r, i64::overflowing_sub)
                        };
                        (v, scale)
                    }
                    Op::Mul => (self.zip(l, r, i64::overflowing_mul), sl + sr),
                }))
            }
        }
    }

    fn leaf(&mut self, e: &Arc<dyn PhysicalExpr>) -> DfResult<Option<(Vals, i8)>> {
        match e.evaluate(self.batch)? {
            ColumnarValue::Scalar(ScalarValue::Decimal128(Some(v), _, s)) => {
                Ok(i64::try_from(v).ok().map(|v| (Vals::Const(v), s)))
            }
            ColumnarValue::Scalar(_) => Ok(None),
            ColumnarValue::Array(a) => {
                let DataType::Decimal128(_, s) = *a.data_type() else {
                    return Ok(None);
                };
                let a = a.as_primitive::<Decimal128Type>();
                let out: Vec<i64> = a.values().iter().map(|&v| v as i64).collect();
                let wide = a
                    .values()
                    .iter()
                    .zip(&out)
                    .fold(false, |w, (&v, &n)| w | (n as i128 != v));
                if wide {
                    return Ok(None);
                }
                self.nulls = NullBuffer::union(self.nulls.as_ref(), a.nulls());
                Ok(Some((Vals::Rows(out), s)))
            }
        }
    }

    /// `v` times `10^by` (`by` >= 0).
    fn rescale(&mut self, v: Vals, by: i8) -> Vals {
        if by == 0 {
            return v;
        }
        match 10i64.checked_pow(by as u32) {
            Some(m) => self.zip(v, Vals::Const(m), i64::overflowing_mul),
            None => {
                self.overflow = true;
                v
            }
        }
    }

    fn zip(&mut self, l: Vals, r: Vals, f: impl Fn(i64, i64) -> (i64, bool)) -> Vals {
        let mut over = false;
        let out = match (l, r) {
            (Vals::Const(a), Vals::Const(b)) => {
                let (v, o) = f(a, b);
                self.overflow |= o;
                return Vals::Const(v);
            }
            (Vals::Rows(mut a), Vals::Const(b)) => {
                for x in a.iter_mut() {
                    let (v, o) = f(*x, b);
                    *x = v;
                    over |= o;
                }
                a
            }
            (Vals::Const(a), Vals::Rows(mut b)) => {
                for x in b.iter_mut() {
                    let (v, o) = f(a, *x);
                    *x = v;
                    over |= o;
                }
                b
            }
            (Vals::Rows(mut a), Vals::Rows(b)) => {
                for (x, &y) in a.iter_mut().zip(b.iter()) {
                    let (v, o) = f(*x, y);
                    *x = v;
                    over |= o;
                }
                a
            }
        };
        self.overflow |= over;
        debug_assert_eq!(out.len(), self.rows);
        Vals::Rows(out)
    }
}

/// A decimal arithmetic tree evaluated in `i64` (see the module docs); `original` evaluates
/// any batch that does not fit, and is what plans display and rewrite.
#[derive(Debug)]
pub struct Decimal64Expr {
    original: Arc<dyn PhysicalExpr>,
    program: Node,
    precision: u8,
    scale: i8,
}

impl Decimal64Expr {
    fn fast(&self, batch: &RecordBatch) -> DfResult<Option<ArrayRef>> {
        let mut eval = Eval {
            batch,
            rows: batch.num_rows(),
            nulls: None,
            overflow: false,
        };
        let Some((vals, scale)) = eval.node(&self.program)? else {
            return Ok(None);
        };
        if eval.overflow || scale != self.scale {
            return Ok(None);
        }
        let values: Vec<i128> = match vals {
            Vals::Rows(v) => v.into_iter().map(i128::from).collect(),
            Vals::Const(c) => vec![c as i128; eval.rows],
        };
        let array = Decimal128Array::new(values.into(), eval.nulls)
            .with_precision_and_scale(self.precision, self.scale)?;
        Ok(Some(Arc::new(array)))
    }
}

impl fmt::Display for Decimal64Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "decimal64")?;
        self.program.fmt_tree(f)
    }
}

impl PartialEq for Decimal64Expr {
    fn eq(&self, other: &Self) -> bool {
        self.original.as_ref() == other.original.as_ref()
    }
}

impl Eq for Decimal64Expr {}

impl Hash for Decimal64Expr {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.original.hash(state);
    }
}

impl PhysicalExpr for Decimal64Expr {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn data_type(&self, input_schema: &Schema) -> DfResult<DataType> {
        self.original.data_type(input_schema)
    }

    fn nullable(&self, input_schema: &Schema) -> DfResult<bool> {
        self.original.nullable(input_schema)
    }

    fn evaluate(&self, batch: &RecordBatch) -> DfResult<ColumnarValue> {
        match self.fast(batch)? {
            Some(a) => Ok(ColumnarValue::Array(a)),
            None => self.original.evaluate(batch),
        }
    }

    /// The leaves: rewrites (column renumbering) reach them, and [`Self::with_new_children`]
    /// rebuilds the tree over the new ones.
    fn children(&self) -> Vec<&Arc<dyn PhysicalExpr>> {
        let mut out = Vec::new();
        self.program.leaves(&mut out);
        out
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn PhysicalExpr>>,
    ) -> DfResult<Arc<dyn PhysicalExpr>> {
        let mut leaves = children.into_iter();
        let program = replace_leaves(&self.program, &mut leaves);
        let original = program.to_expr()?;
        Ok(Arc::new(Decimal64Expr {
            original,
            program,
            precision: self.precision,
            scale: self.scale,
        }))
    }

    fn fmt_sql(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.original.fmt_sql(f)
    }
}

fn replace_leaves(node: &Node, leaves: &mut impl Iterator<Item = Arc<dyn PhysicalExpr>>) -> Node {
    match node {
        Node::Leaf(e) => Node::Leaf(leaves.next().unwrap_or_else(|| e.clone())),
        Node::Bin { op, left, right } => Node::Bin {
            op: *op,
            left: Box::new(replace_leaves(left, leaves)),
            right: Box::new(replace_leaves(right, leaves)),
        },
    }
}

impl Node {
    /// The tree as DataFusion's own expressions (the fallback).
    fn to_expr(&self) -> DfResult<Arc<dyn PhysicalExpr>> {
        Ok(match self {
            Node::Leaf(e) => e.clone(),
            Node::Bin { op, left, right } => {
                let op = match op {
                    Op::Add => Operator::Plus,
                    Op::Sub => Operator::Minus,
                    Op::Mul => Operator::Multiply,
                };
                Arc::new(BinaryExpr::new(left.to_expr()?, op, right.to_expr()?))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::Field;
    use datafusion::physical_expr::expressions::{col, lit};
    use proptest::prelude::*;

    fn schema() -> Arc<Schema> {
        Arc::new(Schema::new(vec![
            Field::new("price", DataType::Decimal128(15, 2), true),
            Field::new("disc", DataType::Decimal128(15, 2), true),
            Field::new("wide", DataType::Decimal128(30, 2), true),
        ]))
    }

    fn bin(
        l: Arc<dyn PhysicalExpr>,
        op: Operator,
        r: Arc<dyn PhysicalExpr>,
    ) -> Arc<dyn PhysicalExpr> {
        Arc::new(BinaryExpr::new(l, op, r))
    }

    /// `price * (1 - disc) * (1 + disc)`, Q01's shape.
    fn q01(s: &Schema) -> Arc<dyn PhysicalExpr> {
        let one = lit(ScalarValue::Decimal128(Some(1), 20, 0));
        let price = col("price", s).unwrap();
        let disc = col("disc", s).unwrap();
        let a = bin(one.clone(), Operator::Minus, disc.clone());
        let b = bin(one, Operator::Plus, disc);
        bin(bin(price, Operator::Multiply, a), Operator::Multiply, b)
    }

    fn batch(s: &Arc<Schema>, price: Vec<Option<i128>>, disc: Vec<Option<i128>>) -> RecordBatch {
        let n = price.len();
        let dec = |v: Vec<Option<i128>>, p, sc| -> ArrayRef {
            Arc::new(
                Decimal128Array::from(v)
                    .with_precision_and_scale(p, sc)
                    .unwrap(),
            )
        };
        RecordBatch::try_new(
            s.clone(),
            vec![
                dec(price, 15, 2),
                dec(disc, 15, 2),
                dec(vec![Some(1); n], 30, 2),
            ],
        )
        .unwrap()
    }

    fn both(e: &Arc<dyn PhysicalExpr>, s: &Schema, b: &RecordBatch) -> (ArrayRef, ArrayRef) {
        let fused = fuse(e, s).expect("fusable");
        let want = e.evaluate(b).unwrap().into_array(b.num_rows()).unwrap();
        let got = fused.evaluate(b).unwrap().into_array(b.num_rows()).unwrap();
        (want, got)
    }

    #[test]
    fn only_narrow_decimal_arithmetic_is_fused() {
        let s = schema();
        assert!(fuse(&q01(&s), &s).is_some());
        // A leaf of precision 30 is read as 64 bits while its values fit.
        let wide = bin(
            col("wide", &s).unwrap(),
            Operator::Multiply,
            col("price", &s).unwrap(),
        );
        assert!(fuse(&wide, &s).is_some());
        // A bare column is not arithmetic.
        assert!(fuse(&col("price", &s).unwrap(), &s).is_none());
        // Division keeps Arrow's rounding rules.
        let div = bin(
            col("price", &s).unwrap(),
            Operator::Divide,
            col("disc", &s).unwrap(),
        );
        assert!(fuse(&div, &s).is_none());
    }

    #[test]
    fn overflow_falls_back_to_arrow() {
        let s = schema();
        let e = q01(&s);
        // 10^14 * (1 - 10^4) * (1 + 10^4) does not fit 64 bits, but does fit 128: the
        // batch is Arrow's, same values.
        let big = 99_999_999_999_999i128;
        let b = batch(&s, vec![Some(big), Some(5)], vec![Some(1_000_000), None]);
        let (want, got) = both(&e, &s, &b);
        assert_eq!(&want, &got);
        assert_eq!(got.data_type(), &e.data_type(&s).unwrap());
        // Past 128 bits Arrow fails, and so does the fused expression.
        let b = batch(&s, vec![Some(big)], vec![Some(-big)]);
        assert!(e.evaluate(&b).is_err());
        assert!(fuse(&e, &s).unwrap().evaluate(&b).is_err());
    }

    #[test]
    fn renumbered_columns_keep_the_fast_path() {
        let s = schema();
        let fused = fuse(&q01(&s), &s).unwrap();
        let kids: Vec<Arc<dyn PhysicalExpr>> = fused.children().into_iter().cloned().collect();
        let again = fused.clone().with_new_children(kids).unwrap();
        assert!(again.as_any().is::<Decimal64Expr>());
        let b = batch(&s, vec![Some(12_345), None], vec![Some(7), Some(3)]);
        let want = q01(&s).evaluate(&b).unwrap().into_array(2).unwrap();
        assert_eq!(&again.evaluate(&b).unwrap().into_array(2).unwrap(), &want);
    }

    proptest! {
        #[test]
        fn same_as_arrow(rows in proptest::collection::vec(
            (proptest::option::of(-10_000_000_000i128..10_000_000_000),
             proptest::option::of(-1_000i128..1_000)), 0..64)) {
            let s = schema();
            let (price, disc): (Vec<_>, Vec<_>) = rows.into_iter().unzip();
            let b = batch(&s, price, disc);
            let price_col = col("price", &s).unwrap();
            let disc_col = col("disc", &s).unwrap();
            let exprs = [
                q01(&s),
                bin(price_col.clone(), Operator::Multiply, disc_col.clone()),
                bin(price_col.clone(), Operator::Minus, bin(disc_col.clone(), Operator::Multiply, lit(ScalarValue::Decimal128(Some(3), 5, 1)))),
                bin(lit(ScalarValue::Decimal128(Some(-7), 3, 0)), Operator::Plus, price_col),
            ];
            for e in &exprs {
                let (want, got) = both(e, &s, &b);
                prop_assert_eq!(&want, &got);
            }
        }
    }
}
