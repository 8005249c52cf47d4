//! Plain strings for queries over several tables: a logical analyzer rule. In: an analyzed
//! plan. Out: when it reads two or more tables, the same plan with every dictionary-encoded
//! string column cast to plain `Utf8` right above its table scan (and the plan's types
//! coerced again); single-table plans unchanged.
//!
//! Segments hand strings out dictionary-encoded, and every batch carries its segment's whole
//! dictionary. Within one table's aggregation that is what makes grouping fast. Through joins
//! and exchanges it is ruinous: each of the thousands of small batches a hash join's build
//! side collects still holds a reference to the dictionary, and DataFusion's memory
//! accounting counts it in every batch — TPC-H Q21 at scale factor 1 "held" 6.3 GB for a
//! few megabytes of `s_name` values and failed. Plain strings cost a copy of the values
//! each row uses, once, at the scan. Filters pushed below the cast still reach the segment
//! indexes (`filter::column_of` sees through a lossless cast).

use std::sync::Arc;

use arrow::datatypes::DataType;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, Result as DfResult};
use datafusion::config::ConfigOptions;
use datafusion::logical_expr::{cast, Expr, LogicalPlan, Projection, TableScan};
use datafusion::optimizer::analyzer::type_coercion::TypeCoercion;
use datafusion::optimizer::AnalyzerRule;

#[derive(Debug, Default)]
pub struct PlainStringsAcrossTables;

impl AnalyzerRule for PlainStringsAcrossTables {
    fn analyze(&self, plan: LogicalPlan, config: &ConfigOptions) -> DfResult<LogicalPlan> {
        let mut scans = 0usize;
        let mut outer_dictionary = false;
        plan.apply_with_subqueries(|node| {
            if matches!(node, LogicalPlan::TableScan(_)) {
                scans += 1;
            }
            // A correlated subquery's outer reference carries its column's type; leave such
            // plans alone rather than retype the reference.
            node.apply_expressions(|e| {
                e.apply(|x| {
                    if let Expr::OuterReferenceColumn(f, _) = x {
                        outer_dictionary |= is_dictionary_string(f.data_type());
                    }
                    Ok(TreeNodeRecursion::Continue)
                })
            })?;
            Ok(TreeNodeRecursion::Continue)
        })?;
        if scans < 2 || outer_dictionary {
            return Ok(plan);
        }
        let plan = plan
            .transform_up_with_subqueries(|node| match node {
                LogicalPlan::TableScan(scan) if has_dictionary_strings(&scan) => {
                    Ok(Transformed::yes(plain(scan)?))
                }
                other => Ok(Transformed::yes(other.recompute_schema()?)),
            })?
            .data;
        // Comparisons planned against the dictionary type are coerced again.
        TypeCoercion::new().analyze(plan, config)
    }

    fn name(&self) -> &str {
        "plain_strings_across_tables"
    }
}

fn is_dictionary_string(t: &DataType) -> bool {
    matches!(t, DataType::Dictionary(_, v) if v.as_ref() == &DataType::Utf8)
}

fn has_dictionary_strings(scan: &TableScan) -> bool {
    scan.projected_schema
        .fields()
        .iter()
        .any(|f| is_dictionary_string(f.data_type()))
}

/// `scan` under a projection that casts its dictionary strings to `Utf8`, names unchanged.
fn plain(scan: TableScan) -> DfResult<LogicalPlan> {
    let exprs: Vec<Expr> = scan
        .projected_schema
        .iter()
        .map(|(qualifier, field)| {
            let col = Expr::Column(Column::new(qualifier.cloned(), field.name()));
            if is_dictionary_string(field.data_type()) {
                cast(col, DataType::Utf8).alias_qualified(qualifier.cloned(), field.name())
            } else {
                col
            }
        })
        .collect();
    Ok(LogicalPlan::Projection(Projection::try_new(
        exprs,
        Arc::new(LogicalPlan::TableScan(scan)),
    )?))
}
