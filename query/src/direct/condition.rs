//! The WHERE clause of a direct query as a segment predicate. In: sqlparser's expression and
//! the table's schema. Out: the [`Predicate`] the same filter becomes on DataFusion's path, or
//! `None` when any part of it is outside what this module reads.
//!
//! Each literal takes the value DataFusion's type coercion and constant folding would give it
//! against the column it is compared with, and the result goes through
//! [`crate::filter::to_predicate`], the translation DataFusion's pushed-down filters take. So
//! the two paths cannot disagree on what a leaf means; this module only decides which
//! literals it can type without DataFusion:
//! - string columns against quoted strings (`=`, `<>`, `<`…`>=`, `IN`, `BETWEEN`, `LIKE`,
//!   `ILIKE`);
//! - `INT`/`LONG` columns against integers, `DOUBLE` columns against integers (up to 2^53)
//!   and decimal numbers (read as `f64`, as DataFusion reads them);
//! - `BOOLEAN` columns against `true`/`false`, and alone as a condition;
//! - `TIMESTAMP` columns against `to_timestamp_millis(<integer>)`, a quoted timestamp
//!   (Arrow's string-to-timestamp cast, the one DataFusion's coercion applies), either
//!   plus or minus `INTERVAL '…'` of whole milliseconds (no months: those depend on the date);
//! - `IS [NOT] NULL`, `AND`, `OR`, `NOT`, parentheses.

use std::sync::Arc;

use arrow::array::{Array, StringArray, TimestampMillisecondArray, TimestampNanosecondArray};
use arrow::compute::kernels::cast_utils::{
    parse_interval_month_day_nano_config, IntervalParseConfig, IntervalUnit,
};
use arrow::compute::{cast_with_options, CastOptions};
use arrow::datatypes::{DataType, TimeUnit};
use basalt_segment::{ColumnDef, ColumnType, Predicate, SegmentSchema};
use datafusion::common::{Column, ScalarValue};
use datafusion::logical_expr::{expr::InList, Between, BinaryExpr, Expr, Like, Operator};
use datafusion::sql::sqlparser::ast::{
    BinaryOperator, Expr as SqlExpr, Function, FunctionArg, FunctionArgExpr, Interval,
    UnaryOperator, Value, ValueWithSpan,
};

use super::shape::{column_name, plain_call};

/// The predicate of `selection` over `table`, as DataFusion's path would push it down.
pub(crate) fn predicate(
    selection: &SqlExpr,
    table: &str,
    schema: &SegmentSchema,
) -> Option<Predicate> {
    let expr = condition(selection, &Scope { table, schema })?;
    crate::filter::to_predicate(&expr, schema)
}

struct Scope<'a> {
    table: &'a str,
    schema: &'a SegmentSchema,
}

impl Scope<'_> {
    /// The single-value column `e` names, of a type this module types literals for.
    fn column(&self, e: &SqlExpr) -> Option<&ColumnDef> {
        let def = self
            .schema
            .column(column_name(e, self.table)?)
            .filter(|d| !d.multi_value)?;
        use ColumnType as C;
        matches!(
            def.ty,
            C::String | C::Int | C::Long | C::Double | C::Boolean | C::Timestamp
        )
        .then_some(def)
    }
}

fn condition(e: &SqlExpr, scope: &Scope) -> Option<Expr> {
    let binary = |l: Expr, op: Operator, r: Expr| {
        Some(Expr::BinaryExpr(BinaryExpr::new(
            Box::new(l),
            op,
            Box::new(r),
        )))
    };
    match e {
        SqlExpr::Nested(inner) => condition(inner, scope),
        SqlExpr::BinaryOp { left, op, right } => {
            if let Some(logical) = match op {
                BinaryOperator::And => Some(Operator::And),
                BinaryOperator::Or => Some(Operator::Or),
                _ => None,
            } {
                return binary(condition(left, scope)?, logical, condition(right, scope)?);
            }
            let op = comparison(op)?;
            match scope.column(left) {
                Some(def) => binary(column(def), op, literal(right, def)?),
                None => {
                    let def = scope.column(right)?;
                    binary(literal(left, def)?, op, column(def))
                }
            }
        }
        SqlExpr::UnaryOp {
            op: UnaryOperator::Not,
            expr,
        } => Some(Expr::Not(Box::new(condition(expr, scope)?))),
        SqlExpr::Between {
            expr,
            negated,
            low,
            high,
        } => {
            let def = scope.column(expr)?;
            Some(Expr::Between(Between::new(
                Box::new(column(def)),
                *negated,
                Box::new(literal(low, def)?),
                Box::new(literal(high, def)?),
            )))
        }
        SqlExpr::InList {
            expr,
            list,
            negated,
        } => {
            let def = scope.column(expr)?;
            let list = list
                .iter()
                .map(|v| literal(v, def))
                .collect::<Option<Vec<_>>>()?;
            if list.is_empty() {
                return None;
            }
            Some(Expr::InList(InList::new(
                Box::new(column(def)),
                list,
                *negated,
            )))
        }
        SqlExpr::IsNull(e) => Some(Expr::IsNull(Box::new(column(scope.column(e)?)))),
        SqlExpr::IsNotNull(e) => Some(Expr::IsNotNull(Box::new(column(scope.column(e)?)))),
        SqlExpr::Like {
            negated,
            any: false,
            expr,
            pattern,
            escape_char: None,
        } => like(*negated, expr, pattern, false, scope),
        SqlExpr::ILike {
            negated,
            any: false,
            expr,
            pattern,
            escape_char: None,
        } => like(*negated, expr, pattern, true, scope),
        // A BOOLEAN column alone is the condition that it is true.
        e => {
            let def = scope.column(e)?;
            (def.ty == ColumnType::Boolean).then(|| column(def))
        }
    }
}

fn like(
    negated: bool,
    expr: &SqlExpr,
    pattern: &SqlExpr,
    case_insensitive: bool,
    scope: &Scope,
) -> Option<Expr> {
    let def = scope.column(expr)?;
    if def.ty != ColumnType::String {
        return None;
    }
    Some(Expr::Like(Like::new(
        negated,
        Box::new(column(def)),
        Box::new(literal(pattern, def)?),
        None,
        case_insensitive,
    )))
}

fn column(def: &ColumnDef) -> Expr {
    Expr::Column(Column::new_unqualified(def.name.clone()))
}

fn comparison(op: &BinaryOperator) -> Option<Operator> {
    Some(match op {
        BinaryOperator::Eq => Operator::Eq,
        BinaryOperator::NotEq => Operator::NotEq,
        BinaryOperator::Lt => Operator::Lt,
        BinaryOperator::LtEq => Operator::LtEq,
        BinaryOperator::Gt => Operator::Gt,
        BinaryOperator::GtEq => Operator::GtEq,
        _ => return None,
    })
}

/// `e` as a literal of the type DataFusion compares it with `def` in.
fn literal(e: &SqlExpr, def: &ColumnDef) -> Option<Expr> {
    let v = match def.ty {
        ColumnType::String => ScalarValue::Utf8(Some(quoted(e)?.to_string())),
        ColumnType::Int | ColumnType::Long => ScalarValue::Int64(Some(integer(e)?)),
        ColumnType::Double => ScalarValue::Float64(Some(float(e)?)),
        ColumnType::Boolean => match value(e)? {
            Value::Boolean(b) => ScalarValue::Boolean(Some(*b)),
            _ => return None,
        },
        ColumnType::Timestamp => ScalarValue::TimestampMillisecond(Some(instant(e)?), None),
        _ => return None,
    };
    Some(Expr::Literal(v, None))
}

fn value(e: &SqlExpr) -> Option<&Value> {
    match e {
        SqlExpr::Value(ValueWithSpan { value, .. }) => Some(value),
        _ => None,
    }
}

fn quoted(e: &SqlExpr) -> Option<&str> {
    match value(e)? {
        Value::SingleQuotedString(s) => Some(s),
        _ => None,
    }
}

/// A number literal's text and sign.
fn number(e: &SqlExpr) -> Option<(bool, &str)> {
    match e {
        SqlExpr::UnaryOp {
            op: UnaryOperator::Minus,
            expr,
        } => match value(expr)? {
            Value::Number(n, false) => Some((true, n)),
            _ => None,
        },
        e => match value(e)? {
            Value::Number(n, false) => Some((false, n)),
            _ => None,
        },
    }
}

/// An integer literal that fits 64 bits.
fn integer(e: &SqlExpr) -> Option<i64> {
    let (negative, n) = number(e)?;
    if !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: i64 = n.parse().ok()?;
    if negative {
        n.checked_neg()
    } else {
        Some(n)
    }
}

/// A number as DataFusion types it against a DOUBLE column: an integer (exactly
/// representable) or a decimal number read as `f64`.
fn float(e: &SqlExpr) -> Option<f64> {
    if let Some(i) = integer(e) {
        const EXACT: i64 = 1 << 53;
        return (-EXACT..=EXACT).contains(&i).then_some(i as f64);
    }
    let (negative, n) = number(e)?;
    // Digits, one point, an exponent: what SQL number literals are (no `inf`, `NaN`).
    if !n
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'))
    {
        return None;
    }
    let x: f64 = n.parse().ok()?;
    let x = if negative { -x } else { x };
    x.is_finite().then_some(x)
}

/// A point in time, in milliseconds since the epoch.
fn instant(e: &SqlExpr) -> Option<i64> {
    let ms = match e {
        SqlExpr::Nested(inner) => return instant(inner),
        SqlExpr::BinaryOp { left, op, right } => {
            let sign = match op {
                BinaryOperator::Plus => 1,
                BinaryOperator::Minus => -1,
                _ => return None,
            };
            let SqlExpr::Interval(interval) = right.as_ref() else {
                return None;
            };
            instant(left)?.checked_add(sign * interval_ms(interval)?)?
        }
        SqlExpr::Function(f) => millis_argument(f)?,
        e => cast_to_timestamp(quoted(e)?)?,
    };
    // DataFusion's interval arithmetic goes through chrono, which fails outside its range.
    arrow::temporal_conversions::timestamp_ms_to_datetime(ms).map(|_| ms)
}

/// The integer argument of `to_timestamp_millis(<integer>)`.
fn millis_argument(f: &Function) -> Option<i64> {
    let (name, args) = plain_call(f)?;
    if name != "to_timestamp_millis" {
        return None;
    }
    match args {
        [FunctionArg::Unnamed(FunctionArgExpr::Expr(e))] => integer(e),
        _ => None,
    }
}

/// A quoted timestamp through Arrow's cast, as DataFusion coerces a string compared with a
/// `TIMESTAMP` column (an unparsable one is DataFusion's error to report). One with a finer
/// part than milliseconds is left to DataFusion too: whether it is cut to milliseconds
/// before the comparison is DataFusion's coercion's choice, not this module's.
fn cast_to_timestamp(s: &str) -> Option<i64> {
    let text: Arc<dyn Array> = Arc::new(StringArray::from(vec![s]));
    let options = CastOptions {
        safe: false,
        ..CastOptions::default()
    };
    let cast = |unit| cast_with_options(&text, &DataType::Timestamp(unit, None), &options).ok();
    let ms = cast(TimeUnit::Millisecond)?;
    let ms = ms.as_any().downcast_ref::<TimestampMillisecondArray>()?;
    let ns = cast(TimeUnit::Nanosecond)?;
    let ns = ns.as_any().downcast_ref::<TimestampNanosecondArray>()?;
    let whole = ms.len() == 1
        && ms.is_valid(0)
        && ns.is_valid(0)
        && ms.value(0).checked_mul(1_000_000) == Some(ns.value(0));
    whole.then(|| ms.value(0))
}

/// An interval of whole milliseconds, parsed as DataFusion parses it (`INTERVAL '5
/// minutes'`, `INTERVAL '5' MINUTE`); `None` for months, which are not a fixed length.
fn interval_ms(interval: &Interval) -> Option<i64> {
    let Interval {
        value,
        leading_field,
        leading_precision: None,
        last_field: None,
        fractional_seconds_precision: None,
    } = interval
    else {
        return None;
    };
    let text = match self::value(value)? {
        Value::SingleQuotedString(s) => s.clone(),
        Value::Number(n, false) => n.clone(),
        _ => return None,
    };
    let text = match leading_field {
        Some(field) => format!("{text} {field}"),
        None => text,
    };
    let parsed =
        parse_interval_month_day_nano_config(&text, IntervalParseConfig::new(IntervalUnit::Second))
            .ok()?;
    if parsed.months != 0 {
        return None;
    }
    let nanos = parsed.days as i128 * 86_400_000_000_000 + parsed.nanoseconds as i128;
    if nanos % 1_000_000 != 0 {
        return None;
    }
    i64::try_from(nanos / 1_000_000).ok()
}
