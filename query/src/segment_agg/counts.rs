//! `count(*)` grouped, fed the rows' groups alone. In: per row, its group (no argument is
//! evaluated: `count(*)` is planned as a count of a non-null literal, which DataFusion's
//! accumulator would receive as an array of that literal per batch and check for nulls).
//! Out: DataFusion's `count` state and value (one `Int64` per group, never null), so states
//! built here merge with DataFusion's in a broker's final aggregate and the other way round.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Int64Array};
use arrow::datatypes::Int64Type;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};

/// Rows per group at least, on average over a batch, for its counts to be kept in four
/// interleaved sets (see `update_batch`).
const LANE_ROWS_PER_GROUP: usize = 16;

/// Rows per group.
#[derive(Debug, Default)]
pub(crate) struct RowCounts {
    counts: Vec<i64>,
}

impl RowCounts {
    fn grow(&mut self, total_num_groups: usize) {
        if total_num_groups > self.counts.len() {
            self.counts.resize(total_num_groups, 0);
        }
    }
}

/// Adds one to counter `g`, or notes that there is no such counter (checked with the
/// increment rather than in a pass of its own: the branch is never taken).
#[inline(always)]
fn bump<T: std::ops::AddAssign + From<u8>>(counters: &mut [T], g: usize, bad: &mut bool) {
    match counters.get_mut(g) {
        Some(c) => *c += T::from(1),
        None => *bad = true,
    }
}

fn past_groups(n: usize) -> DataFusionError {
    DataFusionError::Internal(format!("a group past the {n} groups counted"))
}

impl GroupsAccumulator for RowCounts {
    fn update_batch(
        &mut self,
        _values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> DfResult<()> {
        if opt_filter.is_some() {
            return Err(DataFusionError::Internal(
                "count(*) of segments takes no filter".into(),
            ));
        }
        self.grow(total_num_groups);
        let n = self.counts.len();
        let mut bad = false;
        // (u32 lane counters: a batch of more rows takes the plain loop.)
        if group_indices.len() < LANE_ROWS_PER_GROUP.saturating_mul(n)
            || group_indices.len() > u32::MAX as usize
        {
            for &g in group_indices {
                bump(&mut self.counts, g, &mut bad);
            }
        } else {
            // Few groups, many rows: consecutive rows mostly hit the same counters, and each
            // increment would wait for the previous one's store. Four sets of counters,
            // summed after, let four increments run at once.
            let mut lanes = vec![0u32; 4 * n];
            let (a, rest) = lanes.split_at_mut(n);
            let (b, rest) = rest.split_at_mut(n);
            let (c, d) = rest.split_at_mut(n);
            let quads = group_indices.chunks_exact(4);
            for &g in quads.remainder() {
                bump(a, g, &mut bad);
            }
            for q in quads {
                bump(a, q[0], &mut bad);
                bump(b, q[1], &mut bad);
                bump(c, q[2], &mut bad);
                bump(d, q[3], &mut bad);
            }
            for (g, count) in self.counts.iter_mut().enumerate() {
                *count += i64::from(a[g]) + i64::from(b[g]) + i64::from(c[g]) + i64::from(d[g]);
            }
        }
        match bad {
            true => Err(past_groups(n)),
            false => Ok(()),
        }
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        _opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> DfResult<()> {
        let [state] = values else {
            return Err(DataFusionError::Internal(
                "a count's state is one column".into(),
            ));
        };
        let partial = state
            .as_primitive_opt::<Int64Type>()
            .filter(|a| a.null_count() == 0 && a.len() == group_indices.len())
            .ok_or_else(|| {
                DataFusionError::Internal(format!(
                    "a count's state must be {} non-null Int64 values, got {}",
                    group_indices.len(),
                    state.data_type()
                ))
            })?;
        self.grow(total_num_groups);
        for (&g, &n) in group_indices.iter().zip(partial.values().iter()) {
            *self
                .counts
                .get_mut(g)
                .ok_or_else(|| past_groups(total_num_groups))? += n;
        }
        Ok(())
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> DfResult<ArrayRef> {
        Ok(Arc::new(Int64Array::from(
            emit_to.take_needed(&mut self.counts),
        )))
    }

    fn state(&mut self, emit_to: EmitTo) -> DfResult<Vec<ArrayRef>> {
        Ok(vec![self.evaluate(emit_to)?])
    }

    fn size(&self) -> usize {
        self.counts.capacity() * std::mem::size_of::<i64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_rows_merges_states_and_emits_in_parts() {
        let mut c = RowCounts::default();
        c.update_batch(&[], &[0, 2, 2, 1, 2], None, 3).unwrap();
        // Many rows over few groups take the interleaved counters (with a remainder).
        let many: Vec<usize> = (0..16 * 3 + 3).map(|i| i % 3).collect();
        let mut lanes = RowCounts::default();
        lanes.update_batch(&[], &many, None, 3).unwrap();
        assert_eq!(
            lanes
                .evaluate(EmitTo::All)
                .unwrap()
                .as_primitive::<Int64Type>()
                .values(),
            &[17, 17, 17]
        );
        let state: ArrayRef = Arc::new(Int64Array::from(vec![10, 5]));
        c.merge_batch(&[state], &[1, 3], None, 4).unwrap();
        let first = c.state(EmitTo::First(2)).unwrap();
        assert_eq!(first[0].as_primitive::<Int64Type>().values(), &[1, 11]);
        let rest = c.evaluate(EmitTo::All).unwrap();
        assert_eq!(rest.as_primitive::<Int64Type>().values(), &[3, 5]);
        // A group past those declared, or a state of another shape, is an error.
        assert!(c.update_batch(&[], &[7], None, 2).is_err());
        let bad: ArrayRef = Arc::new(Int64Array::from(vec![Some(1), None]));
        assert!(c.merge_batch(&[bad], &[0, 1], None, 2).is_err());
    }
}
