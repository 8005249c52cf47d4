//! PARTIAL upsert merges. In: the key's current row and a new row, as [`Cell`]s, and one
//! [`Strategy`] per column. Out: the merged row, which becomes the key's current row.
//!
//! As in Pinot, a null new value never erases the current one; the primary key, comparison
//! and delete columns always take the new row's value (their strategy is OVERWRITE and the
//! spec refuses any other).

use super::config::Strategy;
use super::rows::Cell;

fn add(a: &Cell, b: &Cell) -> Cell {
    match (a, b) {
        (Cell::Int(x), Cell::Int(y)) => Cell::Int(x.wrapping_add(*y)),
        (Cell::Float(x), Cell::Float(y)) => Cell::Float(x + y),
        _ => b.clone(),
    }
}

fn greater(a: &Cell, b: &Cell) -> bool {
    match (a, b) {
        (Cell::Int(x), Cell::Int(y)) => x > y,
        (Cell::Float(x), Cell::Float(y)) => x > y,
        _ => false,
    }
}

fn merge_one(strategy: Strategy, old: &Cell, new: Cell) -> Cell {
    if new.is_null() {
        return old.clone();
    }
    if old.is_null() {
        return new;
    }
    match strategy {
        Strategy::Overwrite => new,
        Strategy::Ignore => old.clone(),
        Strategy::Increment => add(old, &new),
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
    }
}

/// Merges `new` into `old` column by column.
pub fn merge_row(strategies: &[Strategy], old: &[Cell], new: Vec<Cell>) -> Vec<Cell> {
    new.into_iter()
        .enumerate()
        .map(|(c, v)| merge_one(strategies[c], &old[c], v))
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
        assert_eq!(
            merge_row(&s, &old, new),
            vec![
                list(&["a", "b", "b", "c"]),
                list(&["a", "b", "c"]),
                list(&["x"])
            ]
        );
        // No current array: the new one as it is.
        assert_eq!(
            merge_row(&[Strategy::Union], &[Null], vec![list(&["c", "c"])]),
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
        assert_eq!(
            merge_row(&s, &old, new),
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
        assert_eq!(merge_row(&s, &old, new), old);
    }
}
