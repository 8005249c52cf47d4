//! Translates DataFusion filter expressions into segment [`Predicate`]s. In: `Expr` trees as
//! DataFusion hands them to `TableProvider::scan`. Out: a predicate the segment indexes answer
//! exactly, or `None` when any part cannot be answered (DataFusion then filters itself).

use arrow::array::Array;
use arrow::datatypes::{DataType, TimeUnit};
use basalt_segment::{CmpOp, ColumnType, Predicate, SegmentSchema, Value};
use datafusion::logical_expr::{expr::InList, Between, BinaryExpr, Cast, Expr, Like, Operator};
use datafusion::scalar::ScalarValue;

use crate::json_extract::{Extract, Target};
use basalt_segment::search::SearchFunction;

/// Converts `expr`, or returns None if it is not exactly answerable by segments.
pub fn to_predicate(expr: &Expr, schema: &SegmentSchema) -> Option<Predicate> {
    match expr {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => match op {
            Operator::And => Some(Predicate::And(vec![
                to_predicate(left, schema)?,
                to_predicate(right, schema)?,
            ])),
            Operator::Or => Some(Predicate::Or(vec![
                to_predicate(left, schema)?,
                to_predicate(right, schema)?,
            ])),
            _ => {
                let cmp = cmp_op(*op)?;
                if let Some(p) = json_compare(left, cmp, right, schema) {
                    return Some(p);
                }
                if let Some(p) = json_compare(right, flip(cmp), left, schema) {
                    return Some(p);
                }
                if let Some(column) = column_of(left, schema) {
                    let value = literal_for(right, schema, &column)?;
                    return Some(Predicate::Compare {
                        column,
                        op: cmp,
                        value,
                    });
                }
                let column = column_of(right, schema)?;
                let value = literal_for(left, schema, &column)?;
                Some(Predicate::Compare {
                    column,
                    op: flip(cmp),
                    value,
                })
            }
        },
        Expr::Not(e) => Some(Predicate::Not(Box::new(to_predicate(e, schema)?))),
        // A BOOLEAN column as a condition (`WHERE ok`): TRUE rows only.
        Expr::Column(c) => {
            let def = schema.column(&c.name).filter(|d| !d.multi_value)?;
            (def.ty == ColumnType::Boolean).then(|| Predicate::Compare {
                column: def.name.clone(),
                op: CmpOp::Eq,
                value: Value::Bool(true),
            })
        }
        Expr::IsNull(e) => Some(Predicate::IsNull {
            column: column_of(e, schema)?,
            negated: false,
        }),
        Expr::IsNotNull(e) => match extraction(e, schema) {
            Some((column, extract)) => json_leaf(column, &extract, "IS NOT NULL"),
            None => Some(Predicate::IsNull {
                column: column_of(e, schema)?,
                negated: true,
            }),
        },
        Expr::Between(Between {
            expr,
            negated,
            low,
            high,
        }) => {
            let column = column_of(expr, schema)?;
            let p = Predicate::Between {
                low: literal_for(low, schema, &column)?,
                high: literal_for(high, schema, &column)?,
                column,
            };
            Some(if *negated {
                Predicate::Not(Box::new(p))
            } else {
                p
            })
        }
        Expr::InList(InList {
            expr,
            list,
            negated,
        }) => {
            if let (false, Some((column, extract))) = (*negated, extraction(expr, schema)) {
                let values = list
                    .iter()
                    .map(|e| match literal(e)? {
                        Value::Str(s) if !s.starts_with(['{', '[']) => Some(quote(&s, '\'')),
                        _ => None,
                    })
                    .collect::<Option<Vec<_>>>()?;
                if extract.target != Target::String {
                    return None;
                }
                return json_leaf(column, &extract, &format!("IN ({})", values.join(", ")));
            }
            let column = column_of(expr, schema)?;
            Some(Predicate::InList {
                values: list
                    .iter()
                    .map(|e| literal_for(e, schema, &column))
                    .collect::<Option<Vec<_>>>()?,
                column,
                negated: *negated,
            })
        }
        Expr::Like(Like {
            negated,
            expr,
            pattern,
            escape_char,
            case_insensitive,
        }) => {
            if escape_char.is_some_and(|c| c != '\\') {
                return None;
            }
            let column = column_of(expr, schema)?;
            if schema.column(&column)?.ty.physical() != basalt_segment::types::Physical::Str {
                return None;
            }
            let Value::Str(pattern) = literal(pattern)? else {
                return None;
            };
            Some(Predicate::Like {
                column,
                pattern,
                negated: *negated,
                case_insensitive: *case_insensitive,
            })
        }
        Expr::Literal(ScalarValue::Boolean(Some(b)), _) => Some(Predicate::Const(*b)),
        Expr::ScalarFunction(f) => match crate::search_fn::by_name(f.name()) {
            Some(function) => search_predicate(function, &f.args, schema),
            None => array_predicate(f.name(), &f.args, schema),
        },
        _ => None,
    }
}

/// `text_match(col, 'query')` or `json_match(col, 'filter')` on a single-value string column.
fn search_predicate(
    function: SearchFunction,
    args: &[Expr],
    schema: &SegmentSchema,
) -> Option<Predicate> {
    let [column, query] = args else {
        return None;
    };
    let column = column_of(column, schema)?;
    if schema.column(&column)?.ty.physical() != basalt_segment::types::Physical::Str {
        return None;
    }
    let Value::Str(q) = literal(query)? else {
        return None;
    };
    Some(function.parse(&q).ok()?.into_predicate(column))
}

/// `json_extract_scalar(col, '$.path', 'TYPE')` (no default) on a single-value string column,
/// with its checked arguments.
fn extraction(e: &Expr, schema: &SegmentSchema) -> Option<(String, Extract)> {
    let Expr::ScalarFunction(f) = e else {
        return None;
    };
    if f.name() != crate::json_extract::NAME {
        return None;
    }
    let [column, path @ Expr::Literal(..), target @ Expr::Literal(..)] = f.args.as_slice() else {
        return None;
    };
    let column = column_of(column, schema)?;
    if schema.column(&column)?.ty.physical() != basalt_segment::types::Physical::Str {
        return None;
    }
    let consts = [None, lit_of(path), lit_of(target)];
    Some((column, Extract::from_args(&consts).ok()?))
}

fn lit_of(e: &Expr) -> Option<&ScalarValue> {
    match e {
        Expr::Literal(v, _) => Some(v),
        _ => None,
    }
}

/// `text` quoted with `q`, the quote doubled inside.
fn quote(text: &str, q: char) -> String {
    let doubled: String = [q, q].iter().collect();
    format!("{q}{}{q}", text.replace(q, &doubled))
}

/// The `JSON_MATCH` leaf `"path" <condition>` on `column`.
fn json_leaf(column: String, extract: &Extract, condition: &str) -> Option<Predicate> {
    let filter = format!("{} {condition}", quote(extract.path.canonical(), '"'));
    Some(
        SearchFunction::Json
            .parse(&filter)
            .ok()?
            .into_predicate(column),
    )
}

/// A comparison of an extraction with a literal that the JSON index answers exactly: a
/// `STRING` extraction equal to a string (one that an object's or array's JSON text cannot
/// be), or a `DOUBLE` extraction ordered against a number (both read numbers the same way,
/// see [`crate::json_extract::read_number`]).
fn json_compare(call: &Expr, op: CmpOp, value: &Expr, schema: &SegmentSchema) -> Option<Predicate> {
    let (column, extract) = extraction(call, schema)?;
    let condition = match (extract.target, op, literal(value)?) {
        (Target::String, CmpOp::Eq, Value::Str(s)) if !s.starts_with(['{', '[']) => {
            format!("= {}", quote(&s, '\''))
        }
        (Target::Double, CmpOp::Lt | CmpOp::LtEq | CmpOp::Gt | CmpOp::GtEq, v) => {
            let x = match v {
                Value::Int(i) => i as f64,
                Value::Float(x) if x.is_finite() => x,
                _ => return None,
            };
            let op = match op {
                CmpOp::Lt => "<",
                CmpOp::LtEq => "<=",
                CmpOp::Gt => ">",
                _ => ">=",
            };
            format!("{op} {x:?}")
        }
        _ => return None,
    };
    json_leaf(column, &extract, &condition)
}

/// `array_has(col, v)`, `array_has_any(col, [..])`, `array_has_all(col, [..])` on a
/// multi-value column: leaves that match a doc when any of its values does (so `NOT` of one
/// means none does, as in SQL on a non-null array).
fn array_predicate(name: &str, args: &[Expr], schema: &SegmentSchema) -> Option<Predicate> {
    let [array, needle] = args else {
        return None;
    };
    let column = match array {
        Expr::Column(c) => schema
            .column(&c.name)
            .filter(|d| d.multi_value)
            .map(|d| d.name.clone())?,
        _ => return None,
    };
    let eq = |value: Value| Predicate::Compare {
        column: column.clone(),
        op: CmpOp::Eq,
        value,
    };
    match name {
        "array_has" => literal(needle).filter(|v| *v != Value::Null).map(eq),
        "array_has_any" | "array_has_all" => {
            let values = list_literal(needle)?;
            if values.is_empty() || values.contains(&Value::Null) {
                return None;
            }
            Some(match name {
                "array_has_any" => Predicate::InList {
                    column: column.clone(),
                    values,
                    negated: false,
                },
                _ => Predicate::And(values.into_iter().map(eq).collect()),
            })
        }
        _ => None,
    }
}

/// The elements of a list literal (folded `make_array(..)` or not).
fn list_literal(e: &Expr) -> Option<Vec<Value>> {
    match e {
        Expr::Literal(ScalarValue::List(a), _) if a.len() == 1 && !a.is_null(0) => {
            let values = a.value(0);
            (0..values.len())
                .map(|i| scalar(&ScalarValue::try_from_array(&values, i).ok()?))
                .collect()
        }
        Expr::ScalarFunction(f) if f.name() == "make_array" => f.args.iter().map(literal).collect(),
        _ => None,
    }
}

fn cmp_op(op: Operator) -> Option<CmpOp> {
    Some(match op {
        Operator::Eq => CmpOp::Eq,
        Operator::NotEq => CmpOp::NotEq,
        Operator::Lt => CmpOp::Lt,
        Operator::LtEq => CmpOp::LtEq,
        Operator::Gt => CmpOp::Gt,
        Operator::GtEq => CmpOp::GtEq,
        _ => return None,
    })
}

fn flip(op: CmpOp) -> CmpOp {
    match op {
        CmpOp::Lt => CmpOp::Gt,
        CmpOp::LtEq => CmpOp::GtEq,
        CmpOp::Gt => CmpOp::Lt,
        CmpOp::GtEq => CmpOp::LtEq,
        o => o,
    }
}

/// A column reference, possibly under a value-preserving cast.
fn column_of(e: &Expr, schema: &SegmentSchema) -> Option<String> {
    match e {
        // A multi-value column only through the array functions.
        Expr::Column(c) => schema
            .column(&c.name)
            .filter(|d| !d.multi_value)
            .map(|d| d.name.clone()),
        Expr::Cast(Cast { expr, data_type }) => {
            let name = column_of(expr, schema)?;
            let ty = schema.column(&name)?.ty;
            lossless_cast(ty, data_type).then_some(name)
        }
        _ => None,
    }
}

/// Casts that keep every value distinct and ordered the same way.
fn lossless_cast(from: ColumnType, to: &DataType) -> bool {
    use DataType as D;
    match from {
        ColumnType::String | ColumnType::Json => {
            matches!(to, D::Utf8 | D::LargeUtf8 | D::Utf8View)
                || matches!(to, D::Dictionary(_, v) if matches!(v.as_ref(), D::Utf8 | D::LargeUtf8))
        }
        ColumnType::Int => matches!(to, D::Int32 | D::Int64 | D::Float64),
        ColumnType::Long => matches!(to, D::Int64),
        ColumnType::Float => matches!(to, D::Float32 | D::Float64),
        ColumnType::Double => matches!(to, D::Float64),
        ColumnType::Boolean => matches!(to, D::Boolean),
        ColumnType::Timestamp => matches!(to, D::Timestamp(TimeUnit::Millisecond, _) | D::Int64),
        // Day d becomes d days' worth of the target unit: distinct and ordered.
        ColumnType::Date => matches!(to, D::Date32 | D::Date64 | D::Timestamp(_, _)),
        // Widening: at least as many digits on both sides of the point.
        ColumnType::Decimal { precision, scale } => match to {
            D::Decimal128(p, s) | D::Decimal256(p, s) => {
                *s >= scale as i8 && (*p as i16 - *s as i16) >= (precision as i16 - scale as i16)
            }
            _ => false,
        },
    }
}

/// A literal compared with `column`, in that column's stored units: DATE literals as days,
/// DECIMAL literals as unscaled values at the column's scale (`Value::Ratio` when the
/// literal falls between two stored values, so comparisons stay exact).
fn literal_for(e: &Expr, schema: &SegmentSchema, column: &str) -> Option<Value> {
    let ty = schema.column(column)?.ty;
    let Expr::Literal(v, _) = e else {
        return literal(e);
    };
    if v.is_null() {
        return Some(Value::Null);
    }
    let v = match v {
        ScalarValue::Dictionary(_, inner) => inner.as_ref(),
        v => v,
    };
    use ScalarValue as S;
    match ty {
        ColumnType::Date => {
            const DAY_MS: i128 = basalt_segment::types::DAY_MS as i128;
            let (n, d) = match v {
                S::Date32(Some(x)) => (*x as i128, 1),
                S::Date64(Some(x)) => (*x as i128, DAY_MS),
                S::TimestampSecond(Some(x), _) => (*x as i128, 86_400),
                S::TimestampMillisecond(Some(x), _) => (*x as i128, DAY_MS),
                S::TimestampMicrosecond(Some(x), _) => (*x as i128, DAY_MS * 1000),
                S::TimestampNanosecond(Some(x), _) => (*x as i128, DAY_MS * 1_000_000),
                _ => return None,
            };
            ratio(n, d)
        }
        ColumnType::Decimal { scale, .. } => {
            let (unscaled, lit_scale): (i128, i8) = match v {
                S::Decimal32(Some(x), _, s) => (*x as i128, *s),
                S::Decimal64(Some(x), _, s) => (*x as i128, *s),
                S::Decimal128(Some(x), _, s) => (*x, *s),
                S::Int8(Some(x)) => (*x as i128, 0),
                S::Int16(Some(x)) => (*x as i128, 0),
                S::Int32(Some(x)) => (*x as i128, 0),
                S::Int64(Some(x)) => (*x as i128, 0),
                S::UInt8(Some(x)) => (*x as i128, 0),
                S::UInt16(Some(x)) => (*x as i128, 0),
                S::UInt32(Some(x)) => (*x as i128, 0),
                S::UInt64(Some(x)) => (*x as i128, 0),
                // Floats are not exact decimals: DataFusion filters those itself.
                _ => return None,
            };
            // value = unscaled / 10^lit_scale; stored = value * 10^scale.
            let shift = scale as i32 - lit_scale as i32;
            let pow = |k: i32| 10i128.checked_pow(k.unsigned_abs());
            if shift >= 0 {
                ratio(unscaled.checked_mul(pow(shift)?)?, 1)
            } else {
                ratio(unscaled, pow(shift)?)
            }
        }
        _ => scalar(v),
    }
}

/// `n / d` as an exact segment value: an integer when `d` divides `n`.
fn ratio(n: i128, d: i128) -> Option<Value> {
    if d <= 0 {
        return None;
    }
    if n % d == 0 {
        return i64::try_from(n / d).ok().map(Value::Int);
    }
    Some(Value::Ratio(n, d))
}

/// A literal as a segment value; None for literals the segment cannot compare exactly.
fn literal(e: &Expr) -> Option<Value> {
    match e {
        Expr::Literal(v, _) => scalar(v),
        Expr::Cast(Cast { expr, .. }) => literal(expr).filter(|_| false),
        _ => None,
    }
}

fn scalar(v: &ScalarValue) -> Option<Value> {
    use ScalarValue as S;
    if v.is_null() {
        return Some(Value::Null);
    }
    Some(match v {
        S::Boolean(Some(b)) => Value::Bool(*b),
        S::Int8(Some(x)) => Value::Int(*x as i64),
        S::Int16(Some(x)) => Value::Int(*x as i64),
        S::Int32(Some(x)) => Value::Int(*x as i64),
        S::Int64(Some(x)) => Value::Int(*x),
        S::UInt8(Some(x)) => Value::Int(*x as i64),
        S::UInt16(Some(x)) => Value::Int(*x as i64),
        S::UInt32(Some(x)) => Value::Int(*x as i64),
        S::UInt64(Some(x)) => Value::Int(i64::try_from(*x).ok()?),
        S::Float32(Some(x)) => Value::Float(*x as f64),
        S::Float64(Some(x)) => Value::Float(*x),
        S::Utf8(Some(s)) | S::LargeUtf8(Some(s)) | S::Utf8View(Some(s)) => Value::Str(s.clone()),
        S::TimestampMillisecond(Some(x), _) => Value::Int(*x),
        S::TimestampSecond(Some(x), _) => Value::Int(x.checked_mul(1000)?),
        S::TimestampMicrosecond(Some(x), _) if x % 1000 == 0 => Value::Int(x / 1000),
        S::TimestampNanosecond(Some(x), _) if x % 1_000_000 == 0 => Value::Int(x / 1_000_000),
        S::Dictionary(_, inner) => return scalar(inner),
        _ => return None,
    })
}

/// DataFusion's pushdown answer for `filters` over a table of `schema`: exact where the
/// segment predicate answers the filter ([`to_predicate`]), unsupported elsewhere.
pub fn pushdown(
    filters: &[&Expr],
    schema: &SegmentSchema,
) -> Vec<datafusion::logical_expr::TableProviderFilterPushDown> {
    use datafusion::logical_expr::TableProviderFilterPushDown;
    filters
        .iter()
        .map(|f| match to_predicate(f, schema) {
            Some(_) => TableProviderFilterPushDown::Exact,
            None => TableProviderFilterPushDown::Unsupported,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use basalt_segment::ColumnDef;
    use datafusion::prelude::{col, lit};

    fn schema() -> SegmentSchema {
        SegmentSchema {
            columns: vec![
                ColumnDef::new("country", ColumnType::String),
                ColumnDef::new("latency", ColumnType::Double),
                ColumnDef::new("n", ColumnType::Int),
            ],
            time_column: None,
            star_trees: Vec::new(),
        }
    }

    #[test]
    fn converts_supported_shapes() {
        let s = schema();
        let e = col("country")
            .eq(lit("US"))
            .and(col("latency").gt(lit(10.0)));
        assert!(matches!(to_predicate(&e, &s), Some(Predicate::And(_))));
        let e = lit(5).lt(col("n"));
        assert_eq!(
            to_predicate(&e, &s),
            Some(Predicate::Compare {
                column: "n".into(),
                op: CmpOp::Gt,
                value: Value::Int(5)
            })
        );
        assert!(to_predicate(&col("country").like(lit("ab%")), &s).is_some());
        assert!(
            to_predicate(&col("country").in_list(vec![lit("a"), lit("b")], true), &s).is_some()
        );
    }

    #[test]
    fn rejects_what_indexes_cannot_answer() {
        let s = schema();
        assert!(to_predicate(&(col("n") + lit(1)).eq(lit(3)), &s).is_none());
        assert!(to_predicate(&col("nope").eq(lit(3)), &s).is_none());
        let cast = Expr::Cast(Cast::new(Box::new(col("latency")), DataType::Int64));
        assert!(to_predicate(&cast.eq(lit(3)), &s).is_none());
        // OR with one unsupported side is unsupported as a whole.
        let e = col("n").eq(lit(1)).or((col("n") * lit(2)).eq(lit(4)));
        assert!(to_predicate(&e, &s).is_none());
    }
}
