//! `TEXT_MATCH(column, 'query')` and `JSON_MATCH(column, 'filter')`, Pinot's index-backed
//! filters. In: a string (or JSON) column and a constant query — tantivy's syntax for text
//! (see `basalt_segment::text::query`), Pinot's filter syntax for JSON (see
//! `basalt_segment::json::filter`). Out: TRUE where the value matches, NULL for a NULL value.
//!
//! On a table's scan the filter becomes a segment predicate ([`crate::filter`]) answered by
//! each segment's index (or, for segments without one, by testing each distinct value); this
//! function answers it everywhere else — rows of a real-time table not yet in a segment, a
//! call inside an expression the scan does not take — with the same rules, so both give
//! the same rows. A query that does not parse is refused at planning with the reason.

use std::any::Any;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray};
use arrow::compute::{cast, take};
use arrow::datatypes::DataType;
use basalt_segment::search::{Search, SearchFunction, SearchQuery};
use datafusion::common::{plan_err, ScalarValue};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

#[derive(Debug, PartialEq, Eq, Hash)]
struct SearchFn {
    function: SearchFunction,
    name: String,
    signature: Signature,
}

/// The function's name in DataFusion (lower case).
pub fn name(function: SearchFunction) -> String {
    function.sql_name().to_ascii_lowercase()
}

/// The search function called `name`, if it is one.
pub fn by_name(name: &str) -> Option<SearchFunction> {
    SearchFunction::ALL
        .into_iter()
        .find(|f| f.sql_name().eq_ignore_ascii_case(name))
}

/// The function, to register on every session.
pub fn udf(function: SearchFunction) -> ScalarUDF {
    ScalarUDF::new_from_impl(SearchFn {
        function,
        name: name(function),
        signature: Signature::any(2, Volatility::Immutable),
    })
}

/// The query a call's second argument holds, parsed; an error naming what is wrong with it
/// otherwise.
pub fn parse_query(function: SearchFunction, arg: &ScalarValue) -> Result<SearchQuery> {
    let (sql, what) = (function.sql_name(), function.argument());
    let Some(Some(text)) = arg.try_as_str() else {
        return plan_err!("{sql}'s {what} must be a string, not {}", arg.data_type());
    };
    function
        .parse(text)
        .map_err(|e| DataFusionError::Plan(format!("{sql} {what} {text:?}: {e}")))
}

pub(crate) fn is_string(t: &DataType) -> bool {
    match t {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Null => true,
        DataType::Dictionary(_, v) => is_string(v),
        _ => false,
    }
}

impl ScalarUDFImpl for SearchFn {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        if !args.iter().all(is_string) {
            return plan_err!(
                "{}(column, '{}') takes a string column and a string {}, not ({})",
                self.function.sql_name(),
                self.function.argument(),
                self.function.argument(),
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
        let (sql, what) = (self.function.sql_name(), self.function.argument());
        match args.get(1) {
            Some(Expr::Literal(v, _)) => {
                parse_query(self.function, v)?;
            }
            Some(_) => return plan_err!("{sql}'s {what} must be a constant string"),
            None => return plan_err!("{sql} takes a column and a {what}"),
        }
        Ok(ExprSimplifyResult::Original(args))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let (sql, what) = (self.function.sql_name(), self.function.argument());
        let [column, query] = args.args.as_slice() else {
            return plan_err!("{sql} takes a column and a {what}");
        };
        let ColumnarValue::Scalar(q) = query else {
            return plan_err!("{sql}'s {what} must be a constant string");
        };
        let q = parse_query(self.function, q)?;
        let search = q.search();
        Ok(match column {
            ColumnarValue::Scalar(v) => {
                let a = v.to_array_of_size(1)?;
                ColumnarValue::Scalar(ScalarValue::try_from_array(&matches(&a, search)?, 0)?)
            }
            ColumnarValue::Array(a) => ColumnarValue::Array(Arc::new(matches(a, search)?)),
        })
    }
}

/// TRUE where a value of `a` matches, NULL where it is NULL; a dictionary's values are
/// tested once each.
fn matches(a: &ArrayRef, search: Search<'_>) -> Result<BooleanArray> {
    let test = |v: Option<&str>| v.map(|s| search.matches_str(s));
    Ok(match a.data_type() {
        DataType::Dictionary(_, _) => {
            let d = a.as_any_dictionary();
            let values = matches(d.values(), search)?;
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
