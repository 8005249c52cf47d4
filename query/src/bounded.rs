//! Functions whose output can be far larger than their input, wrapped so the memory they
//! would allocate is reserved from the query's pool first. In: calls of `repeat`, `lpad`,
//! `rpad`, `replace`, `regexp_replace`, `array_repeat`, `array_resize`, `range` and
//! `generate_series`. Out: the wrapped function's answer, or a memory error before anything
//! is allocated.
//!
//! `SELECT repeat('x', 2000000000)` asks for 2 GB from a 30-byte statement; DataFusion's
//! functions allocate without consulting the memory pool, so without this a few such calls
//! take the server down. Each wrapper computes an upper bound of the bytes its call returns
//! (from the argument values: lengths times counts) and holds that much of the query's
//! reservation while the wrapped function runs. Everything else (name, signature, types,
//! simplification) is the wrapped function's.

use std::any::Any;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::FieldRef;
use arrow::datatypes::{DataType, Int64Type, IntervalMonthDayNanoType, TimeUnit};
use datafusion::common::Result as DfResult;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryPool};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl,
    Signature,
};

/// How a function's output size follows from its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Estimate {
    /// `repeat(s, n)`: len(s) * n.
    Repeat,
    /// `lpad/rpad(s, n [, fill])`: n characters of up to 4 bytes.
    Pad,
    /// `replace(s, from, to)`: every occurrence of `from` becomes `to`.
    Replace,
    /// `regexp_replace(s, pattern, replacement [, flags])`: at most len(s) + 1 matches, each
    /// replaced by the replacement with its group references expanded.
    RegexpReplace,
    /// `array_repeat(v, n)`: n copies of v.
    ArrayRepeat,
    /// `array_resize(a, n [, v])`: n elements.
    ArrayResize,
    /// `range/generate_series(start, stop [, step])`: (stop - start) / step values.
    Series,
}

/// The functions wrapped, by name.
const WRAPPED: &[(&str, Estimate)] = &[
    ("repeat", Estimate::Repeat),
    ("lpad", Estimate::Pad),
    ("rpad", Estimate::Pad),
    ("replace", Estimate::Replace),
    ("regexp_replace", Estimate::RegexpReplace),
    ("array_repeat", Estimate::ArrayRepeat),
    ("array_resize", Estimate::ArrayResize),
    ("range", Estimate::Series),
    ("generate_series", Estimate::Series),
];

#[derive(Debug)]
pub(crate) struct Bounded {
    inner: Arc<ScalarUDF>,
    estimate: Estimate,
    pool: Arc<dyn MemoryPool>,
}

impl PartialEq for Bounded {
    fn eq(&self, other: &Self) -> bool {
        self.inner == other.inner && self.estimate == other.estimate
    }
}

impl Eq for Bounded {}

impl Hash for Bounded {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.inner.hash(state);
        self.estimate.hash(state);
    }
}

/// Wrappers of the amplifying functions `registered` has, reserving from `pool`.
pub fn wrappers(
    registered: &std::collections::HashMap<String, Arc<ScalarUDF>>,
    pool: &Arc<dyn MemoryPool>,
) -> Vec<ScalarUDF> {
    WRAPPED
        .iter()
        .filter_map(|(name, estimate)| {
            registered.get(*name).map(|inner| {
                ScalarUDF::new_from_impl(Bounded {
                    inner: inner.clone(),
                    estimate: *estimate,
                    pool: pool.clone(),
                })
            })
        })
        .collect()
}

/// `registered` (a registry built once, its wrappers reserving from some other pool) with
/// its wrapped functions reserving from `pool` instead: a plan fragment's functions.
pub fn rebind(
    registered: &std::collections::HashMap<String, Arc<ScalarUDF>>,
    pool: &Arc<dyn MemoryPool>,
) -> std::collections::HashMap<String, Arc<ScalarUDF>> {
    let mut out = registered.clone();
    for f in out.values_mut() {
        if let Some(b) = f.inner().as_any().downcast_ref::<Bounded>() {
            *f = Arc::new(ScalarUDF::new_from_impl(Bounded {
                inner: b.inner.clone(),
                estimate: b.estimate,
                pool: pool.clone(),
            }));
        }
    }
    out
}

fn as_array(v: &ColumnarValue) -> DfResult<ArrayRef> {
    Ok(match v {
        ColumnarValue::Array(a) => a.clone(),
        ColumnarValue::Scalar(s) => s.to_array_of_size(1)?,
    })
}

/// Rows the call computes: the longest array argument (scalars count once).
fn rows(args: &[ArrayRef]) -> usize {
    args.iter().map(|a| a.len()).max().unwrap_or(0)
}

/// Argument `i` as i64 values per row (a scalar broadcast); `None` where it is null or does
/// not convert.
fn ints(args: &[ArrayRef], i: usize) -> Option<Vec<Option<i64>>> {
    let a = args.get(i)?;
    let a = match a.data_type() {
        DataType::Timestamp(_, _) => arrow::compute::cast(
            &arrow::compute::cast(a, &DataType::Timestamp(TimeUnit::Nanosecond, None)).ok()?,
            &DataType::Int64,
        )
        .ok()?,
        DataType::Date32 | DataType::Date64 => arrow::compute::cast(
            &arrow::compute::cast(a, &DataType::Timestamp(TimeUnit::Nanosecond, None)).ok()?,
            &DataType::Int64,
        )
        .ok()?,
        DataType::Interval(_) => {
            let m = arrow::compute::cast(
                a,
                &DataType::Interval(arrow::datatypes::IntervalUnit::MonthDayNano),
            )
            .ok()?;
            let p = m.as_primitive::<IntervalMonthDayNanoType>();
            // The shortest span an interval can be: a month is at least 28 days.
            return Some(
                (0..p.len())
                    .map(|r| {
                        (!p.is_null(r)).then(|| {
                            let v = p.value(r);
                            (v.months as i64)
                                .saturating_mul(28 * 86_400_000_000_000)
                                .saturating_add((v.days as i64).saturating_mul(86_400_000_000_000))
                                .saturating_add(v.nanoseconds)
                        })
                    })
                    .collect(),
            );
        }
        _ => arrow::compute::cast(a, &DataType::Int64).ok()?,
    };
    let p = a.as_primitive::<Int64Type>();
    Some(
        (0..p.len())
            .map(|r| (!p.is_null(r)).then(|| p.value(r)))
            .collect(),
    )
}

/// Byte lengths of argument `i` per row (0 for null).
fn lengths(args: &[ArrayRef], i: usize) -> Option<Vec<u128>> {
    let a = args.get(i)?;
    let l = arrow::compute::kernels::length::length(a).ok()?;
    let l = arrow::compute::cast(&l, &DataType::Int64).ok()?;
    let p = l.as_primitive::<Int64Type>();
    Some(
        (0..p.len())
            .map(|r| {
                if p.is_null(r) {
                    0
                } else {
                    p.value(r).max(0) as u128
                }
            })
            .collect(),
    )
}

/// The value of a per-row vector at `row` (a scalar argument's one value for every row).
fn at<T: Copy + Default>(v: &[T], row: usize) -> T {
    match v.len() {
        0 => T::default(),
        1 => v[0],
        _ => v.get(row).copied().unwrap_or_default(),
    }
}

/// Bytes one value of argument `i` takes, roughly (for array element copies).
fn value_bytes(args: &[ArrayRef], i: usize) -> u128 {
    args.get(i)
        .map(|a| (a.get_array_memory_size() / a.len().max(1)).max(8) as u128)
        .unwrap_or(8)
}

impl Estimate {
    /// An upper bound of the bytes the call returns.
    fn bytes(self, args: &[ArrayRef]) -> u128 {
        let n = rows(args);
        let count = |i: usize| ints(args, i).unwrap_or_default();
        let mut total: u128 = 0;
        match self {
            Estimate::Repeat => {
                let (len, times) = (lengths(args, 0).unwrap_or_default(), count(1));
                for r in 0..n {
                    let t = at(&times, r).unwrap_or(0).max(0) as u128;
                    total = total.saturating_add(at(&len, r).saturating_mul(t));
                }
            }
            Estimate::Pad => {
                let width = count(1);
                for r in 0..n {
                    let w = at(&width, r).unwrap_or(0).max(0) as u128;
                    total = total.saturating_add(w.saturating_mul(4));
                }
            }
            Estimate::Replace | Estimate::RegexpReplace => {
                let s = lengths(args, 0).unwrap_or_default();
                let from = lengths(args, 1).unwrap_or_default();
                let to = lengths(args, 2).unwrap_or_default();
                for r in 0..n {
                    let len = at(&s, r);
                    let occurrences = match self {
                        Estimate::Replace => len / at(&from, r).max(1) + 1,
                        _ => len + 1,
                    };
                    // Group references repeat matched text: each at most the whole string.
                    let each = match self {
                        Estimate::RegexpReplace => at(&to, r).saturating_mul(len.max(1)),
                        _ => at(&to, r),
                    };
                    total = total
                        .saturating_add(len)
                        .saturating_add(occurrences.saturating_mul(each));
                }
            }
            Estimate::ArrayRepeat | Estimate::ArrayResize => {
                let times = count(1);
                let each = if self == Estimate::ArrayRepeat {
                    value_bytes(args, 0)
                } else {
                    16
                };
                for r in 0..n {
                    let t = at(&times, r).unwrap_or(0).max(0) as u128;
                    total = total.saturating_add(t.saturating_mul(each));
                }
            }
            Estimate::Series => {
                let (start, stop) = (count(0), count(1));
                let step = if args.len() > 2 {
                    count(2)
                } else {
                    vec![Some(1)]
                };
                // One argument: range(stop).
                let (start, stop) = if args.len() == 1 {
                    (vec![Some(0)], start)
                } else {
                    (start, stop)
                };
                for r in 0..n {
                    let (a, b, s) = (at(&start, r), at(&stop, r), at(&step, r));
                    if let (Some(a), Some(b), Some(s)) = (a, b, s) {
                        let span = (b as i128 - a as i128).unsigned_abs();
                        let values = span / s.unsigned_abs().max(1) as u128 + 1;
                        total = total.saturating_add(values.saturating_mul(8));
                    }
                }
            }
        }
        total
    }
}

impl ScalarUDFImpl for Bounded {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        self.inner.return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> DfResult<FieldRef> {
        self.inner.return_field_from_args(args)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> DfResult<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }

    /// The session's settings reach the wrapped function (a wrapper may be made from a
    /// function registered before them).
    fn with_updated_config(&self, config: &datafusion::config::ConfigOptions) -> Option<ScalarUDF> {
        let inner = self.inner.inner().with_updated_config(config)?;
        Some(ScalarUDF::new_from_impl(Bounded {
            inner: Arc::new(inner),
            estimate: self.estimate,
            pool: self.pool.clone(),
        }))
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let arrays = args
            .args
            .iter()
            .map(as_array)
            .collect::<DfResult<Vec<_>>>()?;
        let bytes = self.estimate.bytes(&arrays);
        let reservation =
            MemoryConsumer::new(format!("{}()", self.inner.name())).register(&self.pool);
        reservation.try_grow(usize::try_from(bytes).unwrap_or(usize::MAX))?;
        let out = self.inner.invoke_with_args(args);
        drop(reservation);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};

    fn arr(a: impl Array + 'static) -> ArrayRef {
        Arc::new(a)
    }

    /// A fragment's registry, built once, reserves from each fragment's own pool.
    #[test]
    fn rebound_wrappers_reserve_from_the_new_pool() {
        use datafusion::execution::memory_pool::{GreedyMemoryPool, UnboundedMemoryPool};
        let ctx = datafusion::prelude::SessionContext::new();
        let first: Arc<dyn MemoryPool> = Arc::new(UnboundedMemoryPool::default());
        for f in wrappers(ctx.state().scalar_functions(), &first) {
            ctx.register_udf(f);
        }
        let registered = ctx.state().scalar_functions().clone();
        let fragment: Arc<dyn MemoryPool> = Arc::new(GreedyMemoryPool::new(1024));
        let rebound = rebind(&registered, &fragment);
        assert_eq!(rebound.len(), registered.len());
        let mut wrapped = 0;
        for (name, f) in &rebound {
            match f.inner().as_any().downcast_ref::<Bounded>() {
                Some(b) => {
                    assert!(Arc::ptr_eq(&b.pool, &fragment), "{name} reserves elsewhere");
                    wrapped += 1;
                }
                None => assert!(Arc::ptr_eq(f, &registered[name]), "{name} changed"),
            }
        }
        assert!(wrapped >= WRAPPED.len(), "{wrapped} wrapped functions");
    }

    #[test]
    fn bounds_follow_the_arguments() {
        let s = arr(StringArray::from(vec!["ab", "xyz"]));
        let n = arr(Int64Array::from(vec![1_000_000_000]));
        assert_eq!(
            Estimate::Repeat.bytes(&[s.clone(), n.clone()]),
            5_000_000_000
        );
        assert_eq!(
            Estimate::Series.bytes(&[
                arr(Int64Array::from(vec![0])),
                arr(Int64Array::from(vec![3_000_000_000]))
            ]),
            (3_000_000_000u128 + 1) * 8
        );
        assert_eq!(
            Estimate::Series.bytes(&[arr(Int64Array::from(vec![10]))]),
            88
        );
        let one = arr(StringArray::from(vec!["a"]));
        let big = arr(StringArray::from(vec!["x".repeat(1000)]));
        // 'aaaa' with each a replaced by 1000 bytes.
        let four = arr(StringArray::from(vec!["aaaa"]));
        assert!(Estimate::Replace.bytes(&[four, one, big]) >= 4000);
        assert_eq!(Estimate::Pad.bytes(&[s, n]), 8_000_000_000);
    }
}
