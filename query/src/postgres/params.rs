//! Parameter types PostgreSQL infers and DataFusion leaves open. In: a planned statement and
//! the types DataFusion inferred per `$n` (`None` where it could not tell). Out: the same
//! list with the gaps PostgreSQL would fill filled:
//!
//! - `$1::integer`, `CAST($1 AS date)`, `arrow_cast($1, 'List(UInt32)')` (from `$1::oid[]`):
//!   the parameter has the cast's type (SQLAlchemy writes every bound parameter of its
//!   catalog queries this way);
//! - `x = ANY($1)`, `array_has($1, x)`: the parameter is an array of `x`'s type (asyncpg and
//!   pgjdbc bind lists so);
//! - `LIMIT $1 OFFSET $2`: row counts, int8.
//!
//! Clients that send binary parameters (asyncpg) encode them by the type the server
//! describes, so a parameter left open would arrive as text it cannot be.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field};
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::logical_expr::expr::{Cast, Placeholder, ScalarFunction, TryCast};
use datafusion::logical_expr::{ExprSchemable, LogicalPlan};
use datafusion::prelude::Expr;

/// The 1-based index of a `$n` placeholder.
fn index(p: &Placeholder) -> Option<usize> {
    p.id.strip_prefix('$')?
        .parse::<usize>()
        .ok()
        .filter(|&i| i >= 1)
}

/// The placeholder `e` is, under any aliases.
fn placeholder(e: &Expr) -> Option<&Placeholder> {
    match e {
        Expr::Placeholder(p) => Some(p),
        Expr::Alias(a) => placeholder(&a.expr),
        _ => None,
    }
}

/// Fills the `None`s of `params` (indexed from `$1`) from the casts and array membership
/// tests of `plan`, its subqueries included.
pub fn fill_open_types(plan: &LogicalPlan, params: &mut [Option<DataType>]) {
    let mut found: Vec<(usize, DataType)> = Vec::new();
    let _ = plan.apply_with_subqueries(|node| {
        // Expressions are typed against the node's inputs.
        let inputs = node.inputs();
        let schema = match inputs.as_slice() {
            [one] => one.schema().clone(),
            _ => Arc::new(DFSchema::empty()),
        };
        // `LIMIT $1 OFFSET $2`: row counts, int8 as in PostgreSQL.
        if let LogicalPlan::Limit(limit) = node {
            for e in [&limit.skip, &limit.fetch].into_iter().flatten() {
                if let Some(i) = placeholder(e).and_then(index) {
                    found.push((i, DataType::Int64));
                }
            }
        }
        node.apply_expressions(|e| {
            e.apply(|x| {
                infer(x, &schema, &mut found);
                Ok(TreeNodeRecursion::Continue)
            })
        })
    });
    for (i, dt) in found {
        if let Some(slot @ None) = params.get_mut(i - 1) {
            *slot = Some(dt);
        }
    }
}

fn infer(e: &Expr, schema: &DFSchema, found: &mut Vec<(usize, DataType)>) {
    let mut note = |p: &Placeholder, dt: DataType| {
        if let Some(i) = index(p) {
            found.push((i, dt));
        }
    };
    match e {
        Expr::Cast(Cast { expr, data_type }) | Expr::TryCast(TryCast { expr, data_type }) => {
            if let Some(p) = placeholder(expr) {
                note(p, data_type.clone());
            }
        }
        // `arrow_cast($1, 'List(UInt32)')`, what `$1::oid[]` becomes.
        Expr::ScalarFunction(ScalarFunction { func, args })
            if func.name() == "arrow_cast" && args.len() == 2 =>
        {
            if let (Some(p), Expr::Literal(ScalarValue::Utf8(Some(t)), _)) =
                (placeholder(&args[0]), &args[1])
            {
                if let Ok(dt) = t.parse::<DataType>() {
                    note(p, dt);
                }
            }
        }
        Expr::ScalarFunction(ScalarFunction { func, args })
            if matches!(func.name(), "array_has" | "array_contains") && args.len() == 2 =>
        {
            if let (Some(p), Ok(dt)) = (placeholder(&args[0]), args[1].get_type(schema)) {
                let dt = match dt {
                    DataType::Dictionary(_, values) => *values,
                    dt => dt,
                };
                let item = Field::new("item", dt, true);
                note(p, DataType::List(Arc::new(item)));
            }
        }
        _ => {}
    }
}
