//! Orders a query's inner joins by estimated cost before DataFusion plans them. In: an
//! optimized logical plan. Out: the same plan with each tree of inner equi-joins (3 to 10
//! inputs) rebuilt in the order that minimises its estimated intermediate rows, under a
//! projection that restores the tree's output columns.
//!
//! DataFusion joins tables in the order the `FROM` clause names them and only picks each
//! join's build side. TPC-H Q05 names `customer, orders, lineitem, supplier, nation, region`:
//! customers and orders were joined first (2.3M rows at SF10), their join built the hash
//! table 60M line items probe (9.1M rows out), and the `r_name = 'ASIA'` filter applied at
//! the very end. Ordered by cost, region picks its 5 nations, those a fifth of the customers,
//! those a fifth of the orders, and the line items probe a table of 0.46M orders.
//!
//! The order is found by dynamic programming over the connected subsets of the tree's inputs
//! (DPsub; at most 10 inputs, 3^10 splits), with [`crate::cardinality`]'s estimates. Join
//! keys are kept as equivalence classes, so `c_nationkey = s_nationkey AND s_nationkey =
//! n_nationkey` also lets customer join nation directly. A join's cost is its output rows
//! plus, per key column, its probe rows and twice its build rows ([`step_cost`]); cross
//! products are never formed. The tree is rebuilt only when the best order is estimated at under 90% of
//! the written one: estimates are rough, and a plan that is not clearly better is left alone.
//!
//! Only inner joins whose keys are plain columns of one type, with `NULL` never equal to
//! `NULL`, are reordered; their non-equi filters go to the lowest join that has their
//! columns (a tree with a volatile filter is left as written). Outer, semi and anti joins,
//! and any input whose rows cannot be estimated, stay where they are (their own inputs are
//! still ordered).

use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, ExprSchema, NullEquality, Result as DfResult};
use datafusion::logical_expr::utils::{conjunction, split_conjunction};
use datafusion::logical_expr::{
    Expr, Filter, Join, JoinConstraint, JoinType, LogicalPlan, Projection,
};
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};

use crate::cardinality::{estimate, schema_lookup, selectivity, Estimate};

/// Most inputs a join tree may have to be reordered (3^N splits are tried).
const MAX_INPUTS: usize = 10;
/// The written order is kept unless the best is estimated at under this share of its cost.
const KEEP_UNLESS_BELOW: f64 = 0.9;

#[derive(Debug, Default)]
pub struct JoinReorder;

impl OptimizerRule for JoinReorder {
    fn name(&self) -> &str {
        "join_reorder"
    }

    fn supports_rewrite(&self) -> bool {
        true
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> DfResult<Transformed<LogicalPlan>> {
        reorder(plan)
    }
}

/// `plan` with every join tree in it reordered where that pays.
fn reorder(plan: LogicalPlan) -> DfResult<Transformed<LogicalPlan>> {
    // A projection over a tree says which of its columns are read: the rebuilt tree drops
    // the others as soon as no join above needs them.
    if let LogicalPlan::Projection(p) = &plan {
        if is_tree_join(&p.input) {
            let mut needed: Vec<Column> = Vec::new();
            for e in &p.expr {
                for c in e.column_refs() {
                    if !needed.contains(c) {
                        needed.push(c.clone());
                    }
                }
            }
            if let Some(t) = reorder_tree(&p.input, Some(&needed))? {
                if !t.transformed {
                    return Ok(Transformed::no(plan));
                }
                return plan
                    .with_new_exprs(plan.expressions(), vec![t.data])
                    .map(Transformed::yes);
            }
        }
    }
    if is_tree_join(&plan) {
        if let Some(t) = reorder_tree(&plan, None)? {
            return Ok(t);
        }
    }
    plan.map_children(reorder)
}

/// The join tree rooted at `root`, reordered where that pays (and its inputs' own trees);
/// `None` when `root` is not a tree of 3 to [`MAX_INPUTS`] inputs. `needed`: the columns
/// read above the tree (`None`: all of them, in the tree's order).
fn reorder_tree(
    root: &LogicalPlan,
    needed: Option<&[Column]>,
) -> DfResult<Option<Transformed<LogicalPlan>>> {
    let mut tree = Tree::default();
    if !tree.collect(root) || !(3..=MAX_INPUTS).contains(&tree.inputs.len()) {
        return Ok(None);
    }
    // Each input's own joins first.
    let mut changed = false;
    for input in &mut tree.inputs {
        let t = reorder(std::mem::take(input))?;
        changed |= t.transformed;
        *input = t.data;
    }
    if let Some(new) = tree.plan(root, needed)? {
        return Ok(Some(Transformed::yes(new)));
    }
    if changed {
        return Ok(Some(Transformed::yes(tree.rebuild_as_written(root)?)));
    }
    Ok(Some(Transformed::no(root.clone())))
}

/// An inner equi-join that may take part in a tree.
fn is_tree_join(plan: &LogicalPlan) -> bool {
    matches!(plan, LogicalPlan::Join(j)
        if j.join_type == JoinType::Inner
            && j.null_equality == NullEquality::NullEqualsNothing
            && !j.null_aware
            && !j.on.is_empty()
            && j.on.iter().all(|(l, r)| matches!((l, r), (Expr::Column(_), Expr::Column(_)))))
}

/// A projection of plain columns over a tree join: pruning DataFusion puts between joins,
/// which the rebuilt tree does without (the next optimizer pass prunes it again).
fn column_projection_input(plan: &LogicalPlan) -> Option<&LogicalPlan> {
    match plan {
        LogicalPlan::Projection(p)
            if p.expr.iter().all(|e| matches!(e, Expr::Column(_))) && is_tree_join(&p.input) =>
        {
            Some(&p.input)
        }
        _ => None,
    }
}

/// A join tree taken apart: its inputs, its key equalities and its other join filters.
#[derive(Default)]
struct Tree {
    inputs: Vec<LogicalPlan>,
    keys: Vec<(Column, Column)>,
    filters: Vec<Expr>,
}

/// Key columns known equal, and the inputs each comes from.
struct Class {
    members: Vec<(usize, Column)>,
}

/// The cheapest way found to join one subset of the inputs.
#[derive(Clone)]
struct Best {
    cost: f64,
    rows: f64,
    /// The two subsets joined (0 for a single input).
    split: (u32, u32),
}

impl Tree {
    /// Takes `plan` apart; false when the tree cannot be reordered.
    fn collect(&mut self, plan: &LogicalPlan) -> bool {
        if let Some(input) = column_projection_input(plan) {
            return self.collect(input);
        }
        match plan {
            LogicalPlan::Join(j) if is_tree_join(plan) => {
                if !self.collect(&j.left) || !self.collect(&j.right) {
                    return false;
                }
                for (l, r) in &j.on {
                    let (Expr::Column(l), Expr::Column(r)) = (l, r) else {
                        return false;
                    };
                    let types = (
                        j.left.schema().field_from_column(l),
                        j.right.schema().field_from_column(r),
                    );
                    match types {
                        (Ok(a), Ok(b)) if a.data_type() == b.data_type() => {}
                        _ => return false,
                    }
                    self.keys.push((l.clone(), r.clone()));
                }
                if let Some(f) = &j.filter {
                    // A volatile filter (`random() < 0.5`) is evaluated once per row pair
                    // of its own join; elsewhere it would sample other pairs.
                    if f.is_volatile() {
                        return false;
                    }
                    self.filters
                        .extend(split_conjunction(f).into_iter().cloned());
                }
                true
            }
            other => {
                self.inputs.push(other.clone());
                true
            }
        }
    }

    /// The input a column comes from.
    fn input_of(&self, c: &Column) -> Option<usize> {
        self.inputs.iter().position(|p| p.schema().has_column(c))
    }

    /// The inputs an expression reads, as a bit set.
    fn inputs_of(&self, e: &Expr) -> Option<u32> {
        let mut set = 0u32;
        for c in e.column_refs() {
            set |= 1 << self.input_of(c)?;
        }
        Some(set)
    }

    fn classes(&self) -> Option<Vec<Class>> {
        let mut classes: Vec<Class> = Vec::new();
        for (l, r) in &self.keys {
            let (li, ri) = (self.input_of(l)?, self.input_of(r)?);
            let find = |classes: &[Class], c: &Column| {
                classes
                    .iter()
                    .position(|k| k.members.iter().any(|(_, m)| m == c))
            };
            match (find(&classes, l), find(&classes, r)) {
                (Some(a), Some(b)) if a == b => {}
                (Some(a), Some(b)) => {
                    let (keep, gone) = (a.min(b), a.max(b));
                    let moved = classes.remove(gone).members;
                    classes[keep].members.extend(moved);
                }
                (Some(a), None) => classes[a].members.push((ri, r.clone())),
                (None, Some(b)) => classes[b].members.push((li, l.clone())),
                (None, None) => classes.push(Class {
                    members: vec![(li, l.clone()), (ri, r.clone())],
                }),
            }
        }
        Some(classes)
    }

    /// The tree rebuilt in its best order, or `None` when the written order is kept.
    fn plan(
        &self,
        original: &LogicalPlan,
        needed: Option<&[Column]>,
    ) -> DfResult<Option<LogicalPlan>> {
        let Some(model) = Model::new(self) else {
            return Ok(None);
        };
        let n = self.inputs.len();
        let full = (1u32 << n) - 1;
        let mut best: Vec<Option<Best>> = vec![None; 1 << n];
        for (i, e) in model.inputs.iter().enumerate() {
            best[1 << i] = Some(Best {
                cost: 0.0,
                rows: e.rows,
                split: (0, 0),
            });
        }
        for set in 1..=full {
            if set.count_ones() < 2 {
                continue;
            }
            // Each unordered split once: the left part holds the set's lowest input.
            let low = set & set.wrapping_neg();
            let rest = set ^ low;
            let mut sub = rest;
            loop {
                let left = low | sub;
                let right = set ^ left;
                if right != 0 {
                    if let (Some(a), Some(b)) = (&best[left as usize], &best[right as usize]) {
                        if let Some((rows, keys)) = model.join_rows(left, a.rows, right, b.rows) {
                            let cost = a.cost + b.cost + step_cost(rows, a.rows, b.rows, keys);
                            if best[set as usize].as_ref().is_none_or(|c| cost < c.cost) {
                                best[set as usize] = Some(Best {
                                    cost,
                                    rows,
                                    split: (left, right),
                                });
                            }
                        }
                    }
                }
                if sub == 0 {
                    break;
                }
                sub = (sub - 1) & rest;
            }
        }
        let Some(chosen) = &best[full as usize] else {
            return Ok(None);
        };
        let Some(written) = model.written_cost(original) else {
            return Ok(None);
        };
        if chosen.cost >= KEEP_UNLESS_BELOW * written {
            return Ok(None);
        }
        tracing::debug!(
            inputs = self.inputs.len(),
            written_cost = written,
            chosen_cost = chosen.cost,
            "join tree reordered"
        );
        if let Some(needed) = needed {
            return Ok(Some(self.build(&model, &best, full, needed)?));
        }
        // Every column of the written tree, in its order.
        let columns = original.schema().columns();
        let joined = self.build(&model, &best, full, &columns)?;
        let projection = Projection::try_new_with_schema(
            columns.into_iter().map(Expr::Column).collect(),
            Arc::new(joined),
            original.schema().clone(),
        )?;
        Ok(Some(LogicalPlan::Projection(projection)))
    }

    /// The join of the inputs in `set`, as `best` splits it, keeping only the `needed`
    /// columns (those read above it).
    fn build(
        &self,
        model: &Model,
        best: &[Option<Best>],
        set: u32,
        needed: &[Column],
    ) -> DfResult<LogicalPlan> {
        let b = best[set as usize]
            .as_ref()
            .expect("a planned subset has a best split");
        let full = (1u32 << self.inputs.len()) - 1;
        // Each filter at the lowest join that has all its inputs; one that reads a single
        // input above that input, one that reads none at the top.
        let (l, r) = b.split;
        let here: Vec<Expr> = self
            .filters
            .iter()
            .zip(&model.filter_inputs)
            .filter(|(_, &reads)| match b.split {
                (0, 0) => reads == set,
                _ => {
                    (reads == 0 && set == full)
                        || (reads != 0
                            && reads & set == reads
                            && reads & l != reads
                            && reads & r != reads)
                }
            })
            .map(|(f, _)| f.clone())
            .collect();
        if b.split == (0, 0) {
            let input = self.inputs[set.trailing_zeros() as usize].clone();
            return match conjunction(here) {
                Some(f) => Ok(LogicalPlan::Filter(Filter::try_new(f, Arc::new(input))?)),
                None => Ok(input),
            };
        }
        let (mut l, mut r) = (l, r);
        // The smaller side first, where DataFusion builds its hash table.
        let rows = |s: u32| best[s as usize].as_ref().map_or(f64::MAX, |b| b.rows);
        if rows(r) < rows(l) {
            std::mem::swap(&mut l, &mut r);
        }
        let on: Vec<(Expr, Expr)> = model
            .classes
            .iter()
            .filter_map(|c| {
                let a = c.members.iter().find(|(i, _)| l & (1 << i) != 0)?;
                let b = c.members.iter().find(|(i, _)| r & (1 << i) != 0)?;
                Some((Expr::Column(a.1.clone()), Expr::Column(b.1.clone())))
            })
            .collect();
        let mut below = needed.to_vec();
        for e in on.iter().flat_map(|(a, b)| [a, b]).chain(&here) {
            for c in e.column_refs() {
                if !below.contains(c) {
                    below.push(c.clone());
                }
            }
        }
        let left = self.build(model, best, l, &below)?;
        let right = self.build(model, best, r, &below)?;
        let join = LogicalPlan::Join(Join::try_new(
            Arc::new(left),
            Arc::new(right),
            on,
            conjunction(here),
            JoinType::Inner,
            JoinConstraint::On,
            NullEquality::NullEqualsNothing,
            false,
        )?);
        // Columns nothing above reads are dropped here rather than carried to the top.
        let keep: Vec<Expr> = join
            .schema()
            .columns()
            .into_iter()
            .filter(|c| needed.contains(c))
            .map(Expr::Column)
            .collect();
        if keep.len() == join.schema().fields().len() {
            return Ok(join);
        }
        Ok(LogicalPlan::Projection(Projection::try_new(
            keep,
            Arc::new(join),
        )?))
    }

    /// `original` with its inputs replaced by (reordered) `self.inputs`, in the written
    /// order.
    fn rebuild_as_written(&self, original: &LogicalPlan) -> DfResult<LogicalPlan> {
        let mut next = 0;
        rebuild(original, &self.inputs, &mut next)
    }
}

fn rebuild(plan: &LogicalPlan, inputs: &[LogicalPlan], next: &mut usize) -> DfResult<LogicalPlan> {
    if let Some(input) = column_projection_input(plan) {
        let inner = rebuild(input, inputs, next)?;
        return plan.with_new_exprs(plan.expressions(), vec![inner]);
    }
    match plan {
        LogicalPlan::Join(j) if is_tree_join(plan) => {
            let left = rebuild(&j.left, inputs, next)?;
            let right = rebuild(&j.right, inputs, next)?;
            plan.with_new_exprs(plan.expressions(), vec![left, right])
        }
        _ => {
            let p = inputs[*next].clone();
            *next += 1;
            Ok(p)
        }
    }
}

/// The cost of one hash join of `a` and `b` rows into `rows` on `keys` key columns: its
/// output, its probe rows and its build rows counted twice (they are hashed and stored),
/// both per key column (each is hashed and compared, and a composite key's filter only
/// narrows the probe scan's bounds, where a single key's is a lookup the scan runs itself).
fn step_cost(rows: f64, a: f64, b: f64, keys: usize) -> f64 {
    rows + keys as f64 * (a.max(b) + 2.0 * a.min(b))
}

/// The estimates a tree is ordered by.
struct Model<'a> {
    tree: &'a Tree,
    inputs: Vec<Estimate>,
    classes: Vec<Class>,
    /// Per filter of the tree, the inputs it reads.
    filter_inputs: Vec<u32>,
}

impl<'a> Model<'a> {
    fn new(tree: &'a Tree) -> Option<Model<'a>> {
        let inputs = tree
            .inputs
            .iter()
            .map(estimate)
            .collect::<Option<Vec<_>>>()?;
        let classes = tree.classes()?;
        let filter_inputs = tree
            .filters
            .iter()
            .map(|f| tree.inputs_of(f))
            .collect::<Option<Vec<_>>>()?;
        Some(Model {
            tree,
            inputs,
            classes,
            filter_inputs,
        })
    }

    /// Distinct values of a key class over the rows of `set` (`rows` of them).
    fn class_ndv(&self, class: &Class, set: u32, rows: f64) -> f64 {
        let mut ndv = rows;
        for (i, c) in &class.members {
            if set & (1 << i) == 0 {
                continue;
            }
            let e = &self.inputs[*i];
            let lookup = schema_lookup(self.tree.inputs[*i].schema(), e);
            let n = lookup(c).and_then(|(c, _)| c.ndv).unwrap_or(e.rows);
            ndv = ndv.min(n);
        }
        ndv.max(1.0)
    }

    /// Estimated rows of joining `left` and `right` (disjoint sets of `a` and `b` rows), and
    /// the key columns they join on; `None` when no key connects them.
    fn join_rows(&self, left: u32, a: f64, right: u32, b: f64) -> Option<(f64, usize)> {
        let mut rows = a * b;
        let mut keys = 0;
        for class in &self.classes {
            let in_left = class.members.iter().any(|(i, _)| left & (1 << i) != 0);
            let in_right = class.members.iter().any(|(i, _)| right & (1 << i) != 0);
            if in_left && in_right {
                keys += 1;
                let l = self.class_ndv(class, left, a);
                let r = self.class_ndv(class, right, b);
                rows /= l.max(r);
            }
        }
        if keys == 0 {
            return None;
        }
        let set = left | right;
        for (k, &reads) in self.filter_inputs.iter().enumerate() {
            if reads & set == reads && reads & left != reads && reads & right != reads {
                rows *= self.filter_selectivity(k);
            }
        }
        Some((rows.max(1.0), keys))
    }

    fn filter_selectivity(&self, k: usize) -> f64 {
        let tree = self.tree;
        let f = &tree.filters[k];
        let lookup = |c: &Column| {
            let i = tree.input_of(c)?;
            schema_lookup(tree.inputs[i].schema(), &self.inputs[i])(c)
        };
        selectivity(f, &lookup)
    }

    /// The cost of the written tree under the same model.
    fn written_cost(&self, original: &LogicalPlan) -> Option<f64> {
        let mut next = 0;
        self.cost_as_written(original, &mut next)
            .map(|(cost, _, _)| cost)
    }

    fn cost_as_written(&self, plan: &LogicalPlan, next: &mut usize) -> Option<(f64, f64, u32)> {
        if let Some(input) = column_projection_input(plan) {
            return self.cost_as_written(input, next);
        }
        match plan {
            LogicalPlan::Join(j) if is_tree_join(plan) => {
                let (ca, a, l) = self.cost_as_written(&j.left, next)?;
                let (cb, b, r) = self.cost_as_written(&j.right, next)?;
                let (rows, keys) = self.join_rows(l, a, r, b)?;
                Some((ca + cb + step_cost(rows, a, b, keys), rows, l | r))
            }
            _ => {
                let i = *next;
                *next += 1;
                Some((0.0, self.inputs[i].rows, 1 << i))
            }
        }
    }
}
