//! Star-tree answers for [`super::SegmentAggregateExec`]. In: at planning, the aggregate's
//! keys and functions ([`StarPlan::of`]); per segment, its footer's star-trees and the
//! predicate as it reads on the segment ([`StarPlan::on_segment`]). Out: the tree, the
//! dimensions' uses and, per aggregate, the metric that answers it; the worker then feeds
//! the selected records' metrics to DataFusion's accumulators as partial states
//! ([`StarRead::states`]), so results are the raw path's.
//!
//! A segment is answered from a tree when every GROUP BY key is a dimension column, the
//! predicate is an AND of conditions each on one dimension, and every aggregate is kept:
//! `count(*)`; `count(c)` and `avg(c)` and `sum(c)` from `sum(c)` (which keeps its non-null
//! count); `min(c)`, `max(c)`; `approx_distinct(c)`. Not for an upsert table's segment with
//! replaced rows, nor under a join's dynamic filter.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryArray, Date32Array, Decimal128Array, Float64Array, Int64Array, UInt64Array,
};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Schema};
use basalt_segment::star_tree::{
    dimension_filters, DimUse, MetricValues, StarMetric, StarTree, SKETCH_REGISTERS,
};
use basalt_segment::{Predicate, SegmentReader};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_expr::expressions::{CastExpr, Column, Literal};
use datafusion::physical_expr::PhysicalExpr;

/// A session extension that turns star-trees off (Pinot's `useStarTree=false`).
#[derive(Debug, Default)]
pub struct StarTreeOff;

/// What an aggregate needs from a tree.
#[derive(Debug, Clone, PartialEq)]
enum Need {
    /// `count(*)`, or `count(c)` of a column without nulls.
    Rows,
    /// `count(c)`: the non-null count any of `sum`/`min`/`max` of `c` keeps.
    NonNull(String),
    Sum(String),
    Min(String),
    Max(String),
    Avg(String),
    Sketch(String),
}

/// The aggregation's shape as star-trees see it, found at planning.
#[derive(Debug)]
pub(crate) struct StarPlan {
    /// GROUP BY key columns, in key order.
    keys: Vec<String>,
    /// Per aggregate: its need and its partial state's types.
    aggs: Vec<(Need, Vec<DataType>)>,
}

/// The column `e` reads directly (with `widened`, also through a cast of an integer column
/// to Int64 or Float64, which DataFusion puts under `sum` and `avg`: the tree's integer sum
/// converted once equals the converted values summed).
fn column_name(e: &Arc<dyn PhysicalExpr>, schema: &Schema, widened: bool) -> Option<String> {
    let mut e = e;
    if widened {
        if let Some(c) = e.as_any().downcast_ref::<CastExpr>() {
            let from = c.expr().data_type(schema).ok()?;
            let to = c.cast_type();
            if !matches!(to, DataType::Float64 | DataType::Int64) || !from.is_integer() {
                return None;
            }
            e = c.expr();
        }
    }
    let c = e.as_any().downcast_ref::<Column>()?;
    Some(schema.field(c.index()).name().clone())
}

impl StarPlan {
    /// `keys`: each GROUP BY key's column name (`None` for an expression); `aggs` over
    /// `schema` (the scan's output, no projection between).
    pub(crate) fn of(
        keys: &[Option<String>],
        aggs: &[Arc<AggregateFunctionExpr>],
        schema: &Schema,
    ) -> Option<StarPlan> {
        let keys = keys.iter().cloned().collect::<Option<Vec<_>>>()?;
        let mut out = Vec::with_capacity(aggs.len());
        for a in aggs {
            let args = a.expressions();
            let [arg] = args.as_slice() else {
                return None;
            };
            let need = match a.fun().name() {
                "count" => match arg.as_any().downcast_ref::<Literal>() {
                    Some(l) if !l.value().is_null() => Need::Rows,
                    Some(_) => return None,
                    None => {
                        let name = column_name(arg, schema, false)?;
                        match schema.field_with_name(&name).ok()?.is_nullable() {
                            false => Need::Rows,
                            true => Need::NonNull(name),
                        }
                    }
                },
                "sum" => Need::Sum(column_name(arg, schema, true)?),
                "avg" => Need::Avg(column_name(arg, schema, true)?),
                "min" => Need::Min(column_name(arg, schema, false)?),
                "max" => Need::Max(column_name(arg, schema, false)?),
                // Over a dictionary string column, through DataFusion's cast to its values.
                "approx_distinct" => {
                    let mut e = arg;
                    if let Some(c) = e.as_any().downcast_ref::<CastExpr>() {
                        let from = c.expr().data_type(schema).ok()?;
                        if !matches!(from, DataType::Dictionary(_, _)) {
                            return None;
                        }
                        e = c.expr();
                    }
                    Need::Sketch(column_name(e, schema, false)?)
                }
                _ => return None,
            };
            let types = a
                .state_fields()
                .ok()?
                .iter()
                .map(|f| f.data_type().clone())
                .collect();
            out.push((need, types));
        }
        Some(StarPlan { keys, aggs: out })
    }

    /// Which metric of `metrics` answers `need`.
    fn metric(need: &Need, metrics: &[StarMetric]) -> Option<usize> {
        let find = |m: StarMetric| metrics.iter().position(|x| *x == m);
        match need {
            Need::Rows => find(StarMetric::Count),
            Need::NonNull(c) => find(StarMetric::Sum(c.clone()))
                .or_else(|| find(StarMetric::Min(c.clone())))
                .or_else(|| find(StarMetric::Max(c.clone()))),
            Need::Sum(c) | Need::Avg(c) => find(StarMetric::Sum(c.clone())),
            Need::Min(c) => find(StarMetric::Min(c.clone())),
            Need::Max(c) => find(StarMetric::Max(c.clone())),
            Need::Sketch(c) => find(StarMetric::ApproxDistinct(c.clone())),
        }
    }

    /// The trees of `seg` whose dimensions hold the keys and `predicate`'s columns and whose
    /// metrics hold the aggregates: (footer index, each key's dimension, each aggregate's
    /// metric).
    fn covering<'a>(
        &'a self,
        seg: &'a SegmentReader,
        predicate: Option<&Predicate>,
    ) -> impl Iterator<Item = (usize, Vec<usize>, Vec<usize>)> + 'a {
        let footer = seg.footer();
        let mut pred_cols = Vec::new();
        if let Some(p) = predicate {
            p.columns(&mut pred_cols);
        }
        footer
            .star_trees
            .iter()
            .enumerate()
            .filter_map(move |(i, meta)| {
                let def = footer.schema.star_trees.get(meta.tree as usize)?;
                let dim = |c: &String| def.dimensions.iter().position(|d| d == c);
                let key_dims = self.keys.iter().map(dim).collect::<Option<Vec<_>>>()?;
                if !pred_cols.iter().all(|c| dim(c).is_some()) {
                    return None;
                }
                let metrics = self
                    .aggs
                    .iter()
                    .map(|(n, _)| Self::metric(n, &def.metrics))
                    .collect::<Option<Vec<_>>>()?;
                Some((i, key_dims, metrics))
            })
    }

    /// Whether a tree of `seg` holds this aggregation's columns and metrics (under
    /// `predicate`, whose shape decides the rest per segment): what EXPLAIN counts.
    pub(crate) fn may_answer(&self, seg: &SegmentReader, predicate: Option<&Predicate>) -> bool {
        self.covering(seg, predicate).next().is_some()
    }

    /// A tree of `seg` that answers this aggregation under `predicate` (as it reads on the
    /// segment; `None`: every row), if any.
    pub(crate) fn on_segment(
        &self,
        seg: &SegmentReader,
        predicate: Option<&Predicate>,
    ) -> DfResult<Option<StarRead>> {
        for (i, key_dims, metrics) in self.covering(seg, predicate) {
            let def = &seg.footer().schema.star_trees[seg.footer().star_trees[i].tree as usize];
            let filters = match predicate {
                None => vec![None; def.dimensions.len()],
                Some(p) => match dimension_filters(seg, p, &def.dimensions).map_err(ext)? {
                    Some(f) => f,
                    None => continue,
                },
            };
            let uses = filters
                .into_iter()
                .enumerate()
                .map(|(d, filter)| {
                    let grouped = key_dims.contains(&d);
                    (grouped || filter.is_some()).then_some(DimUse { grouped, filter })
                })
                .collect();
            return Ok(Some(StarRead {
                tree: seg.star_tree(i).map_err(ext)?,
                uses,
                key_dims,
                metrics,
            }));
        }
        Ok(None)
    }

    /// The partial states of aggregate `a` over records `recs` of `read`'s tree: one row per
    /// record, or for `approx_distinct` one per group (`groups[i]` is record `i`'s group).
    pub(crate) fn states(
        &self,
        read: &StarRead,
        a: usize,
        recs: &[u32],
        groups: &[usize],
    ) -> DfResult<(Vec<ArrayRef>, Option<Vec<usize>>)> {
        let (need, types) = &self.aggs[a];
        let tree = &read.tree;
        let m = &tree.metrics[read.metrics[a]];
        let bad = || DataFusionError::Internal(format!("star-tree metric for {need:?}"));
        let rows = |recs: &[u32]| -> ArrayRef {
            Arc::new(Int64Array::from_iter_values(
                recs.iter().map(|&r| tree.count[r as usize] as i64),
            ))
        };
        let nonnull = match m {
            MetricValues::Int { nonnull, .. } | MetricValues::Float { nonnull, .. } => {
                Some(nonnull)
            }
            _ => None,
        };
        // A record's value, null where it aggregated no value.
        let value = |t: &DataType| -> DfResult<ArrayRef> {
            match m {
                MetricValues::Int { nonnull, values } => int_array(
                    recs.iter()
                        .map(|&r| (nonnull[r as usize] > 0).then(|| values[r as usize])),
                    t,
                ),
                MetricValues::Float { nonnull, values } => Ok(cast(
                    &Float64Array::from_iter(
                        recs.iter()
                            .map(|&r| (nonnull[r as usize] > 0).then(|| values[r as usize])),
                    ),
                    t,
                )?),
                _ => Err(bad()),
            }
        };
        let states: Vec<ArrayRef> = match need {
            Need::Rows => vec![rows(recs)],
            Need::NonNull(_) => {
                let nn = nonnull.ok_or_else(bad)?;
                vec![Arc::new(Int64Array::from_iter_values(
                    recs.iter().map(|&r| nn[r as usize] as i64),
                ))]
            }
            Need::Sum(_) | Need::Min(_) | Need::Max(_) => {
                let [t] = types.as_slice() else {
                    return Err(bad());
                };
                vec![value(t)?]
            }
            Need::Avg(_) => {
                let nn = nonnull.ok_or_else(bad)?;
                let [_, t] = types.as_slice() else {
                    return Err(bad());
                };
                let sums = value(t)?;
                let counts = UInt64Array::from_iter(
                    recs.iter()
                        .map(|&r| (nn[r as usize] > 0).then_some(nn[r as usize])),
                );
                vec![Arc::new(counts), sums]
            }
            Need::Sketch(_) => {
                let MetricValues::Sketch {
                    offsets,
                    registers,
                    ranks,
                } = m
                else {
                    return Err(bad());
                };
                // One sketch per group, the records' registers merged.
                let mut slot_of: Vec<u32> = Vec::new();
                let mut order: Vec<usize> = Vec::new();
                let mut sketches: Vec<u8> = Vec::new();
                for (&r, &g) in recs.iter().zip(groups) {
                    if slot_of.len() <= g {
                        slot_of.resize(g + 1, u32::MAX);
                    }
                    if slot_of[g] == u32::MAX {
                        slot_of[g] = order.len() as u32;
                        order.push(g);
                        sketches.resize(order.len() * SKETCH_REGISTERS, 0);
                    }
                    let base = slot_of[g] as usize * SKETCH_REGISTERS;
                    let (from, to) = (
                        offsets[r as usize] as usize,
                        offsets[r as usize + 1] as usize,
                    );
                    for (&reg, &rank) in registers[from..to].iter().zip(&ranks[from..to]) {
                        let x = &mut sketches[base + reg as usize];
                        *x = (*x).max(rank);
                    }
                }
                let states: ArrayRef = Arc::new(BinaryArray::from_iter_values(
                    sketches.chunks_exact(SKETCH_REGISTERS),
                ));
                return Ok((vec![states], Some(order)));
            }
        };
        Ok((states, None))
    }
}

/// Integer metric values as an array of state type `t` (decimals and dates by their stored
/// integers, not converted).
fn int_array(values: impl Iterator<Item = Option<i64>>, t: &DataType) -> DfResult<ArrayRef> {
    Ok(match t {
        DataType::Decimal128(p, s) => Arc::new(
            Decimal128Array::from_iter(values.map(|v| v.map(i128::from)))
                .with_precision_and_scale(*p, *s)?,
        ),
        DataType::Date32 => {
            Arc::new(Date32Array::from_iter(values.map(|v| {
                v.map(|d| d.clamp(i32::MIN as i64, i32::MAX as i64) as i32)
            })))
        }
        _ => cast(&Int64Array::from_iter(values), t)?,
    })
}

fn ext(e: basalt_segment::SegmentError) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// A tree chosen for a segment: how the query uses each of its dimensions, the dimension of
/// each GROUP BY key and the metric of each aggregate.
pub(crate) struct StarRead {
    pub(crate) tree: Arc<StarTree>,
    pub(crate) uses: Vec<Option<DimUse>>,
    pub(crate) key_dims: Vec<usize>,
    metrics: Vec<usize>,
}
