//! PARTIAL upsert merges. In: the key's current row and a new row, as [`Cell`]s, and one
//! [`Strategy`] per column. Out: the merged row, which becomes the key's current row.
//!
//! As in Pinot, a null new value never erases the current one; the primary key, comparison
//! and delete columns always take the new row's value (their strategy is OVERWRITE and the
//! spec refuses any other).

use arrow::datatypes::DataType;

use super::config::Strategy;
use super::rows::Cell;

/// A merge that cannot be stored: its row is refused, the key keeps its current row.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("column {column}: {message}")]
pub struct MergeError {
    pub column: usize,
    pub message: String,
}

/// `a + b` in the column's type; an INT or LONG sum out of range, or a FLOAT/DOUBLE sum that
/// is not finite, is an error (not a wrapped or truncated value).
fn add(a: &Cell, b: &Cell, ty: &DataType) -> Result<Cell, String> {
    match (a, b) {
        (Cell::Int(x), Cell::Int(y)) => {
            let sum = x
                .checked_add(*y)
                .filter(|s| *ty != DataType::Int32 || i32::try_from(*s).is_ok());
            sum.map(Cell::Int).ok_or_else(|| {
                let name = if *ty == DataType::Int32 {
                    "INT"
                } else {
                    "LONG"
                };
                format!("INCREMENT of {x} by {y} overflows {name}")
            })
        }
        (Cell::Float(x), Cell::Float(y)) => {
            let sum = x + y;
            let fits = match ty {
                DataType::Float32 => (sum as f32).is_finite(),
                _ => sum.is_finite(),
            };
            if fits {
                Ok(Cell::Float(sum))
            } else {
                Err(format!("INCREMENT of {x} by {y} is not a finite number"))
            }
        }
        _ => Ok(b.clone()),
    }
}

fn greater(a: &Cell, b: &Cell) -> bool {
    match (a, b) {
        (Cell::Int(x), Cell::Int(y)) => x > y,
        (Cell::Float(x), Cell::Float(y)) => x > y,
        _ => false,
    }
}

fn merge_one(strategy: Strategy, ty: &DataType, old: &Cell, new: Cell) -> Result<Cell, String> {
    if new.is_null() {
        return Ok(old.clone());
    }
    if old.is_null() {
        return Ok(new);
    }
    Ok(match strategy {
        Strategy::Overwrite => new,
        Strategy::Ignore => old.clone(),
        Strategy::Increment => add(old, &new, ty)?,
        Strategy::Max => {
            if greater(old, &new) {
                old.clone()
            } else {
                new
            }
        }
        Strategy::Min => {
            if greater(&new, old) {
                old.clone()
            } else {
                new
            }
        }
        // Array columns only (checked at spec validation).
        Strategy::Append => match (old, new) {
            (Cell::List(a), Cell::List(b)) => Cell::List(a.iter().cloned().chain(b).collect()),
            (_, new) => new,
        },
        Strategy::Union => match (old, new) {
            (Cell::List(a), Cell::List(b)) => {
                let mut out: Vec<Cell> = Vec::with_capacity(a.len() + b.len());
                for v in a.iter().cloned().chain(b) {
                    if !out.contains(&v) {
                        out.push(v);
                    }
                }
                Cell::List(out)
            }
            (_, new) => new,
        },
    })
}

/// Merges `new` into `old` column by column; `types` are the columns' Arrow types.
pub fn merge_row(
    strategies: &[Strategy],
    types: &[DataType],
    old: &[Cell],
    new: Vec<Cell>,
) -> Result<Vec<Cell>, MergeError> {
    new.into_iter()
        .enumerate()
        .map(|(c, v)| {
            merge_one(strategies[c], &types[c], &old[c], v)
                .map_err(|message| MergeError { column: c, message })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_and_union_merge_arrays() {
        use Cell::*;
        let list = |v: &[&str]| List(v.iter().map(|s| Str(s.to_string())).collect());
        let old = vec![list(&["a", "b"]), list(&["a", "b"]), list(&["x"])];
        let new = vec![list(&["b", "c"]), list(&["b", "c", "c"]), Null];
        let s = [Strategy::Append, Strategy::Union, Strategy::Union];
        let t = vec![DataType::Utf8; 3];
        assert_eq!(
            merge_row(&s, &t, &old, new).unwrap(),
            vec![
                list(&["a", "b", "b", "c"]),
                list(&["a", "b", "c"]),
                list(&["x"])
            ]
        );
        // No current array: the new one as it is.
        assert_eq!(
            merge_row(
                &[Strategy::Union],
                &[DataType::Utf8],
                &[Null],
                vec![list(&["c", "c"])]
            )
            .unwrap(),
            vec![list(&["c", "c"])]
        );
    }

    #[test]
    fn strategies() {
        use Cell::*;
        use Strategy::*;
        let s = [Overwrite, Ignore, Increment, Max, Min, Increment];
        let old = vec![Str("a".into()), Int(1), Int(10), Float(2.0), Int(5), Null];
        let new = vec![
            Str("b".into()),
            Int(2),
            Int(3),
            Float(1.0),
            Int(7),
            Float(4.5),
        ];
        let t = [
            DataType::Utf8,
            DataType::Int64,
            DataType::Int64,
            DataType::Float64,
            DataType::Int32,
            DataType::Float64,
        ];
        assert_eq!(
            merge_row(&s, &t, &old, new).unwrap(),
            vec![
                Str("b".into()),
                Int(1),
                Int(13),
                Float(2.0),
                Int(5),
                Float(4.5)
            ]
        );
        // A null new value keeps the current one, whatever the strategy.
        let new = vec![Null, Null, Null, Null, Null, Null];
        assert_eq!(merge_row(&s, &t, &old, new).unwrap(), old);
    }

    #[test]
    fn increments_out_of_range_are_errors() {
        use Cell::*;
        let inc = |ty: DataType, a: Cell, b: Cell| {
            merge_row(&[Strategy::Increment], &[ty], &[a], vec![b])
        };
        let e = inc(DataType::Int32, Int(i32::MAX as i64), Int(1)).unwrap_err();
        assert!(e.message.contains("overflows INT"), "{e}");
        assert_eq!(
            inc(DataType::Int64, Int(i32::MAX as i64), Int(1)).unwrap(),
            vec![Int(i32::MAX as i64 + 1)]
        );
        assert!(inc(DataType::Int64, Int(i64::MAX), Int(1)).is_err());
        assert!(inc(DataType::Int32, Int(i32::MIN as i64), Int(-1)).is_err());
        assert!(inc(DataType::Float32, Float(3e38), Float(3e38)).is_err());
        assert!(inc(DataType::Float64, Float(f64::MAX), Float(f64::MAX)).is_err());
    }
}
