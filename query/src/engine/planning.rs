//! From a logical plan to the physical plan a query runs. In: a query's session state and
//! the logical plan of its statement. Out: the physical plan, as
//! `SessionState::create_physical_plan` would make it.
//!
//! A dashboard's query reads one table: filters, an aggregate, an order and a limit. Its
//! execution takes a few microseconds when the indexes answer it; planning takes most of the
//! rest, and the logical optimizer is the largest part of planning (issue 20: a count over the
//! last 5 minutes spent ~160 µs there, against ~50 µs reading the segments). A third of
//! DataFusion's rules, and all of Basalt's, rewrite only joins, subqueries or unions, yet each
//! walks the whole plan in every pass. A plan that has none of those is optimized without
//! them ([`reads_one_table`]). The skipped rules cannot change such a plan, so the result is
//! the plan the whole optimizer would make: the same fixed point, reached in the same passes,
//! and `EXPLAIN` (planned the usual way) shows what runs.

use std::sync::Arc;

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::Result as DfResult;
use datafusion::execution::SessionState;
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::optimizer::{Optimizer, OptimizerRule};
use datafusion::physical_plan::ExecutionPlan;

/// The optimizer rules that rewrite only joins, subqueries, set comparisons or unions:
/// DataFusion's (each checked to leave every other node as it is) and Basalt's.
const JOIN_RULES: &[&str] = &[
    "rewrite_set_comparison",
    "optimize_unions",
    "eliminate_join",
    "decorrelate_predicate_subquery",
    "scalar_subquery_to_join",
    "decorrelate_lateral_join",
    "extract_equijoin_predicate",
    "eliminate_cross_join",
    "filter_null_join_keys",
    "eliminate_outer_join",
    "semi_join_pushdown",
    "join_reorder",
    "aggregate_key_reducer",
];

/// The physical plan of `plan` in `state`: analyzed, optimized and planned as
/// `SessionState::create_physical_plan` does, by the optimizer without [`JOIN_RULES`] when
/// the plan [`reads_one_table`].
pub(crate) async fn physical_plan(
    state: &SessionState,
    plan: &LogicalPlan,
) -> DfResult<Arc<dyn ExecutionPlan>> {
    // `EXPLAIN` records every rule's output: DataFusion's own path.
    if matches!(plan, LogicalPlan::Explain(_) | LogicalPlan::Analyze(_)) {
        return state.create_physical_plan(plan).await;
    }
    let analyzed =
        state
            .analyzer()
            .execute_and_check(plan.clone(), state.config_options(), |_, _| {})?;
    let optimized = if reads_one_table(&analyzed)? {
        Optimizer::with_rules(without_join_rules(state.optimizers())).optimize(
            analyzed,
            state,
            |_, _| {},
        )?
    } else {
        state.optimizer().optimize(analyzed, state, |_, _| {})?
    };
    state
        .query_planner()
        .create_physical_plan(&optimized, state)
        .await
}

/// `rules` without [`JOIN_RULES`], in their order.
fn without_join_rules(
    rules: &[Arc<dyn OptimizerRule + Send + Sync>],
) -> Vec<Arc<dyn OptimizerRule + Send + Sync>> {
    rules
        .iter()
        .filter(|r| !JOIN_RULES.contains(&r.name()))
        .cloned()
        .collect()
}

/// Whether `plan` is built only of scans, filters, projections, aggregates, windows, sorts,
/// limits, `DISTINCT`, aliases, `VALUES` and empty relations, with no subquery in any
/// expression: the nodes on which [`JOIN_RULES`] change nothing.
pub(crate) fn reads_one_table(plan: &LogicalPlan) -> DfResult<bool> {
    let mut simple = true;
    plan.apply(|node| {
        simple = matches!(
            node,
            LogicalPlan::Projection(_)
                | LogicalPlan::Filter(_)
                | LogicalPlan::Window(_)
                | LogicalPlan::Aggregate(_)
                | LogicalPlan::Sort(_)
                | LogicalPlan::TableScan(_)
                | LogicalPlan::EmptyRelation(_)
                | LogicalPlan::SubqueryAlias(_)
                | LogicalPlan::Limit(_)
                | LogicalPlan::Values(_)
                | LogicalPlan::Distinct(_)
        );
        if simple {
            node.apply_expressions(|e| {
                if e.exists(|x| Ok(is_subquery(x)))? {
                    simple = false;
                    return Ok(TreeNodeRecursion::Stop);
                }
                Ok(TreeNodeRecursion::Continue)
            })?;
        }
        Ok(match simple {
            true => TreeNodeRecursion::Continue,
            false => TreeNodeRecursion::Stop,
        })
    })?;
    Ok(simple)
}

fn is_subquery(e: &Expr) -> bool {
    matches!(
        e,
        Expr::ScalarSubquery(_)
            | Expr::Exists(_)
            | Expr::InSubquery(_)
            | Expr::SetComparison(_)
            | Expr::OuterReferenceColumn(..)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::datasource::MemTable;
    use datafusion::prelude::SessionContext;

    async fn context() -> SessionContext {
        let ctx = SessionContext::new();
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int64, true),
            Field::new("b", DataType::Utf8, true),
        ]));
        for name in ["t", "u"] {
            let table = MemTable::try_new(schema.clone(), vec![vec![]]).unwrap();
            ctx.register_table(name, Arc::new(table)).unwrap();
        }
        ctx.sql("CREATE VIEW v AS SELECT t.a, u.b FROM t JOIN u ON t.a = u.a")
            .await
            .unwrap();
        ctx
    }

    /// Which plans count as reading one table, judged on the analyzed plan (where a view is
    /// its query).
    #[tokio::test]
    async fn one_table_plans_are_told_from_the_rest() {
        let ctx = context().await;
        let state = ctx.state();
        let cases = [
            ("SELECT count(*) FROM t WHERE a > 3", true),
            (
                "SELECT b, count(*) AS n FROM t GROUP BY b ORDER BY n DESC LIMIT 3",
                true,
            ),
            ("SELECT DISTINCT b FROM t", true),
            ("SELECT a, row_number() OVER (ORDER BY a) FROM t", true),
            ("SELECT 1", true),
            ("SELECT * FROM (SELECT a FROM t) s WHERE a = 1", true),
            ("SELECT * FROM t JOIN u ON t.a = u.a", false),
            ("SELECT * FROM t WHERE a IN (SELECT a FROM u)", false),
            (
                "SELECT * FROM t WHERE EXISTS (SELECT 1 FROM u WHERE u.a = t.a)",
                false,
            ),
            ("SELECT (SELECT max(a) FROM u) FROM t", false),
            ("SELECT a FROM t UNION ALL SELECT a FROM u", false),
            ("SELECT * FROM v", false),
        ];
        for (sql, expected) in cases {
            let plan = state.create_logical_plan(sql).await.unwrap();
            let analyzed = state
                .analyzer()
                .execute_and_check(plan, state.config_options(), |_, _| {})
                .unwrap();
            assert_eq!(reads_one_table(&analyzed).unwrap(), expected, "{sql}");
        }
    }

    /// The optimizer without the join rules reaches the plan the whole optimizer reaches,
    /// for one-table plans; and it leaves joins alone (so the rules it skips matter there).
    #[tokio::test]
    async fn without_join_rules_the_plan_is_the_same() {
        let ctx = context().await;
        let state = ctx.state();
        let lean = Optimizer::with_rules(without_join_rules(state.optimizers()));
        assert!(lean.rules.len() < state.optimizers().len());
        for sql in [
            "SELECT count(*) FROM t WHERE a > 1 + 2 AND b = 'x'",
            "SELECT b, count(*) AS n, sum(a) FROM t WHERE a IS NOT NULL GROUP BY b ORDER BY n DESC LIMIT 3",
            "SELECT DISTINCT b FROM t WHERE true",
            "SELECT count(DISTINCT b) FROM t",
            "SELECT a FROM (SELECT a, b FROM t WHERE a > 0) s WHERE b = 'y' LIMIT 0",
            "SELECT a, sum(a) OVER (PARTITION BY b) FROM t",
        ] {
            let plan = state.create_logical_plan(sql).await.unwrap();
            let analyzed = state
                .analyzer()
                .execute_and_check(plan, state.config_options(), |_, _| {})
                .unwrap();
            assert!(reads_one_table(&analyzed).unwrap(), "{sql}");
            let whole = state
                .optimizer()
                .optimize(analyzed.clone(), &state, |_, _| {})
                .unwrap();
            let without = lean.optimize(analyzed, &state, |_, _| {}).unwrap();
            assert_eq!(whole, without, "{sql}");
        }
        let join = state
            .create_logical_plan("SELECT * FROM t, u WHERE t.a = u.a")
            .await
            .unwrap();
        let join = state
            .analyzer()
            .execute_and_check(join, state.config_options(), |_, _| {})
            .unwrap();
        let whole = state
            .optimizer()
            .optimize(join.clone(), &state, |_, _| {})
            .unwrap();
        let without = lean.optimize(join, &state, |_, _| {}).unwrap();
        assert_ne!(
            whole, without,
            "a cross join with an equality becomes an inner join"
        );
    }
}
