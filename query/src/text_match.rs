//! `TEXT_MATCH(column, 'query')`, Pinot's full-text filter. In: a string column and a
//! constant query in tantivy's syntax (see `basalt_segment::text::query`). Out: TRUE where the
//! value's words match, NULL for a NULL value.
//!
//! On a table's scan the filter becomes a segment predicate ([`crate::filter`]) answered by
//! each segment's text index (or, for segments without one, by tokenizing each distinct
//! value); this function answers it everywhere else — rows of a real-time table not yet in a
//! segment, a `TEXT_MATCH` inside an expression the scan does not take — with the same
//! tokenizer and the same rules, so both give the same rows. A query that does not parse is
//! refused at planning with the reason.

use std::any::Any;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray};
use arrow::compute::{cast, take};
use arrow::datatypes::DataType;
use basalt_segment::text::TextQuery;
use datafusion::common::{plan_err, ScalarValue};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

pub const NAME: &str = "text_match";

#[derive(Debug, PartialEq, Eq, Hash)]
struct TextMatch {
    signature: Signature,
}

/// The function, to register on every session.
pub fn text_match() -> ScalarUDF {
    ScalarUDF::new_from_impl(TextMatch {
        signature: Signature::any(2, Volatility::Immutable),
    })
}

/// The query a `TEXT_MATCH` call's second argument holds, parsed; an error naming what is
/// wrong with it otherwise.
pub fn parse_query(arg: &ScalarValue) -> Result<Arc<TextQuery>> {
    let text = match arg {
        ScalarValue::Utf8(Some(s))
        | ScalarValue::LargeUtf8(Some(s))
        | ScalarValue::Utf8View(Some(s)) => s,
        ScalarValue::Dictionary(_, v) => return parse_query(v),
        other => {
            return plan_err!(
                "TEXT_MATCH's query must be a string, not {}",
                other.data_type()
            )
        }
    };
    TextQuery::parse(text)
        .map(Arc::new)
        .map_err(|e| DataFusionError::Plan(format!("TEXT_MATCH query {text:?}: {e}")))
}

fn is_string(t: &DataType) -> bool {
    match t {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Null => true,
        DataType::Dictionary(_, v) => is_string(v),
        _ => false,
    }
}

impl ScalarUDFImpl for TextMatch {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        if !args.iter().all(is_string) {
            return plan_err!(
                "TEXT_MATCH(column, 'query') takes a string column and a string query, not ({})",
                args.iter()
                    .map(|t| t.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        Ok(DataType::Boolean)
    }

    /// A constant query is parsed here, so a bad one is refused before anything runs.
    fn simplify(&self, args: Vec<Expr>, _info: &SimplifyContext) -> Result<ExprSimplifyResult> {
        match args.get(1) {
            Some(Expr::Literal(v, _)) => {
                parse_query(v)?;
            }
            Some(_) => return plan_err!("TEXT_MATCH's query must be a constant string"),
            None => return plan_err!("TEXT_MATCH takes a column and a query"),
        }
        Ok(ExprSimplifyResult::Original(args))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [column, query] = args.args.as_slice() else {
            return plan_err!("TEXT_MATCH takes a column and a query");
        };
        let ColumnarValue::Scalar(q) = query else {
            return plan_err!("TEXT_MATCH's query must be a constant string");
        };
        let q = parse_query(q)?;
        Ok(match column {
            ColumnarValue::Scalar(v) => {
                let a = v.to_array_of_size(1)?;
                ColumnarValue::Scalar(ScalarValue::try_from_array(&matches(&a, &q)?, 0)?)
            }
            ColumnarValue::Array(a) => ColumnarValue::Array(Arc::new(matches(a, &q)?)),
        })
    }
}

/// TRUE where a value of `a` matches, NULL where it is NULL; a dictionary's values are
/// tokenized once each.
fn matches(a: &ArrayRef, q: &TextQuery) -> Result<BooleanArray> {
    let test = |v: Option<&str>| v.map(|s| q.matches_str(s));
    Ok(match a.data_type() {
        DataType::Dictionary(_, _) => {
            let d = a.as_any_dictionary();
            let values = matches(d.values(), q)?;
            let out = take(&values, d.keys(), None)?;
            out.as_boolean().clone()
        }
        DataType::Utf8 => a.as_string::<i32>().iter().map(test).collect(),
        DataType::LargeUtf8 => a.as_string::<i64>().iter().map(test).collect(),
        DataType::Utf8View => a.as_string_view().iter().map(test).collect(),
        _ => {
            let c = cast(a, &DataType::Utf8)?;
            c.as_string::<i32>().iter().map(test).collect()
        }
    })
}
