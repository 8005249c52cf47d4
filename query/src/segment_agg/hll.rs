//! `approx_distinct` over dictionary-encoded strings, grouped. In: per row, the sketch hash
//! of the row's string — computed once per dictionary entry and segment, not once per row —
//! and its group. Out: DataFusion's `approx_distinct` state (16384 one-byte registers as a
//! binary value per group) and its estimate.
//!
//! The hash (ahash with fixed seeds over the string) and the estimator (Ertl, "New
//! cardinality estimation algorithms for HyperLogLog sketches", arXiv:1702.01284) are the
//! ones DataFusion's `approx_distinct` uses, so sketches built here merge with its sketches
//! and give the same estimates; the differential tests compare the two.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BinaryArray, BooleanArray, UInt64Array};
use arrow::datatypes::UInt64Type;
use basalt_segment::star_tree::sketch_register;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};

const P: usize = 14;
const Q: usize = 64 - P;
/// DataFusion's sketch size; star-trees keep registers of the same sketch.
pub(crate) const REGISTERS: usize = basalt_segment::star_tree::SKETCH_REGISTERS;

/// The sketch hash of a string value: DataFusion's (ahash with its fixed seeds), kept with
/// the segment format, whose star-trees store registers of it.
pub(crate) use basalt_segment::star_tree::sketch_hash_str as hash_str;

/// Registers of every group, `REGISTERS` bytes each.
#[derive(Debug, Default)]
pub(crate) struct HllGroups {
    registers: Vec<u8>,
}

impl HllGroups {
    fn grow(&mut self, groups: usize) -> DfResult<()> {
        let bytes = groups.checked_mul(REGISTERS).ok_or_else(|| {
            DataFusionError::ResourcesExhausted("too many approx_distinct groups".into())
        })?;
        if bytes > self.registers.len() {
            self.registers.resize(bytes, 0);
        }
        Ok(())
    }

    fn groups(&self) -> usize {
        self.registers.len() / REGISTERS
    }

    /// Removes the groups `emit_to` names, returning their registers.
    fn take(&mut self, emit_to: EmitTo) -> Vec<u8> {
        match emit_to {
            EmitTo::All => std::mem::take(&mut self.registers),
            EmitTo::First(n) => {
                let rest = self.registers.split_off(n.min(self.groups()) * REGISTERS);
                std::mem::replace(&mut self.registers, rest)
            }
        }
    }
}

/// The estimate from one sketch's registers.
pub(crate) fn estimate(registers: &[u8]) -> u64 {
    let mut histogram = [0u32; Q + 2];
    for &r in registers {
        histogram[(r as usize).min(Q + 1)] += 1;
    }
    let m = REGISTERS as f64;
    let mut z = m * tau((m - histogram[Q + 1] as f64) / m);
    for h in histogram[1..=Q].iter().rev() {
        z += *h as f64;
        z *= 0.5;
    }
    z += m * sigma(histogram[0] as f64 / m);
    (0.5 / 2f64.ln() * m * m / z).round() as u64
}

fn sigma(x: f64) -> f64 {
    if x == 1.0 {
        return f64::INFINITY;
    }
    let (mut x, mut y, mut z) = (x, 1.0, x);
    loop {
        x *= x;
        let before = z;
        z += x * y;
        y += y;
        if before == z {
            return z;
        }
    }
}

fn tau(x: f64) -> f64 {
    if x == 0.0 || x == 1.0 {
        return 0.0;
    }
    let (mut x, mut y, mut z) = (x, 1.0, 1.0 - x);
    loop {
        x = x.sqrt();
        let before = z;
        y *= 0.5;
        z -= (1.0 - x).powi(2) * y;
        if before == z {
            return z / 3.0;
        }
    }
}

impl GroupsAccumulator for HllGroups {
    /// `values[0]`: sketch hashes (UInt64, null rows skipped).
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> DfResult<()> {
        if opt_filter.is_some() {
            return Err(DataFusionError::Internal(
                "sketch groups take no filter".into(),
            ));
        }
        self.grow(total_num_groups)?;
        let hashes = values
            .first()
            .and_then(|v| v.as_primitive_opt::<UInt64Type>())
            .ok_or_else(|| DataFusionError::Internal("sketch groups take UInt64 hashes".into()))?;
        for (i, (&h, &g)) in hashes.values().iter().zip(group_indices).enumerate() {
            if hashes.is_null(i) {
                continue;
            }
            let (idx, rank) = sketch_register(h);
            let r = &mut self.registers[g * REGISTERS + idx as usize];
            *r = (*r).max(rank);
        }
        Ok(())
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> DfResult<ArrayRef> {
        let regs = self.take(emit_to);
        Ok(Arc::new(UInt64Array::from_iter_values(
            regs.chunks_exact(REGISTERS).map(estimate),
        )))
    }

    fn state(&mut self, emit_to: EmitTo) -> DfResult<Vec<ArrayRef>> {
        let regs = self.take(emit_to);
        Ok(vec![Arc::new(BinaryArray::from_iter_values(
            regs.chunks_exact(REGISTERS),
        ))])
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        _opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> DfResult<()> {
        self.grow(total_num_groups)?;
        let states = values
            .first()
            .and_then(|v| v.as_binary_opt::<i32>())
            .ok_or_else(|| DataFusionError::Internal("sketch state is binary".into()))?;
        for (i, &g) in group_indices.iter().enumerate() {
            let other = states.value(i);
            if other.len() != REGISTERS {
                return Err(DataFusionError::Internal(format!(
                    "sketch state of {} bytes",
                    other.len()
                )));
            }
            let mine = &mut self.registers[g * REGISTERS..(g + 1) * REGISTERS];
            for (a, &b) in mine.iter_mut().zip(other) {
                *a = (*a).max(b);
            }
        }
        Ok(())
    }

    fn size(&self) -> usize {
        self.registers.capacity()
    }
}
